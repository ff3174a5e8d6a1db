"""Configuration: YAML with positions, validation before anything connects, secrets, resolved specs."""
