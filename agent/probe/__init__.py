"""Commissioning probes: read, browse and watch a PLC or broker from the command line."""
