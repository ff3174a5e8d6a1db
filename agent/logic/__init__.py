"""Machine logic: readings to events (monotonic totals, run states, parameters); pure, no I/O, no clock."""
