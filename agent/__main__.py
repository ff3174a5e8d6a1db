"""`python -m agent` is the `prodsmart-edge` command."""

from agent.cli.main import main

raise SystemExit(main())
