"""The prodsmart-edge command line: one module per command."""
