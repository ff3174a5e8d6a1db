"""`python -m agent` is the `prodsmart-edge` command."""

from agent.cli import main

raise SystemExit(main())
