"""Shared values at the bottom of every stage: readings, events, backoff, metrics, config blocks."""
