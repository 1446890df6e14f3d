from frontbench_shared.cli import main

raise SystemExit(main())
