from frontbench_loadtests.cli import main

raise SystemExit(main(__import__("sys").argv[1:]))
