"""Run the backend with `python -m frontbench_backend`, like `frontbench backend`."""

import sys

from frontbench_backend.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
