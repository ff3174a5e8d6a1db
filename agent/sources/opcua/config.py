"""OPC UA connection and tag configuration (validated before anything connects)."""

from __future__ import annotations

from agent.confbase import Duration, Strict


class OpcUaConnection(Strict):
    """One OPC UA server (placeholder: the OPC UA issue completes it)."""

    url: str
    security: str = "None"
    certificate: str | None = None
    private_key: str | None = None
    sampling: Duration = 0.5


class OpcUaTag(Strict):
    """One node (placeholder: the OPC UA issue completes it)."""

    node: str
    type: str | None = None
