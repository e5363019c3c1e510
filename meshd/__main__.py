from meshd.cli.main import main

raise SystemExit(main())
