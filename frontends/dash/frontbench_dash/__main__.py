import sys

from frontbench_dash.cli import main

raise SystemExit(main(sys.argv[1:]))
