"""The simulated protocol: a PLC whose values are a function of time and a seed (demo, tests)."""
