from cad_node.cli import main

raise SystemExit(main())
