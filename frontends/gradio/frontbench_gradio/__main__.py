import sys

from frontbench_gradio.cli import main

raise SystemExit(main(sys.argv[1:]))
