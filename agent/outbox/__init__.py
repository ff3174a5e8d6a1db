"""The outbox: logic state and its calls in one SQLite transaction; order, coalescing, dead letters."""
