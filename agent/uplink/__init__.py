"""The uplink: drains the outbox to Prodsmart (auth, rate limit, retries, outcomes)."""
