"""The read-only browser console: live machines, tags, calls and charts, served by the agent itself."""
