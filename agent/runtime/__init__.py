"""The running agent: wiring, the pipeline, systemd, metrics and HTTP endpoints, logging."""
