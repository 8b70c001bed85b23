from ftcompile.cli import main

raise SystemExit(main())
