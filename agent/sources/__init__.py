"""Protocol sources: each reads tags from one kind of connection and emits `Reading`s."""
