import sys

from frontbench_streamlit.cli import main

raise SystemExit(main(sys.argv[1:]))
