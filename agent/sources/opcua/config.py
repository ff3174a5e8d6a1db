"""OPC UA connection and tag configuration (validated before anything connects)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.core.schema import Duration, Strict
from agent.sources.opcua.nodes import parse_browse_path, parse_node_id

POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MODES = ("Sign", "SignAndEncrypt")
TYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double",
         "float32", "float64", "string", "datetime")
_URL = re.compile(r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(:\d{1,5})?(/\S*)?$")


class OpcUaConnection(Strict):
    """One OPC UA server: where it is, how to talk to it securely, and how to watch its nodes."""

    url: str
    # None, or <policy>/<mode>, e.g. Basic256Sha256/SignAndEncrypt.
    security: str = "None"
    certificate: str | None = None  # the agent's application instance certificate (DER or PEM)
    private_key: str | None = None  # its private key (PEM or DER); a password comes from the secrets
    # How the server's certificate is trusted: "first_use" (the first one seen is pinned for this run,
    # and logged) or a folder of trusted server (or CA) certificates.
    trust: str = "first_use"
    auth: Literal["anonymous", "username"] = "anonymous"  # username: user name and password from secrets
    mode: Literal["subscribe", "poll"] = "subscribe"  # poll: for servers with broken subscriptions
    sampling: Duration = 0.5  # sampling interval of monitored items; the read interval when polling
    publishing: Duration | None = None  # publishing interval of the subscription (default: sampling)
    queue_size: int = Field(10, ge=1, le=10_000)  # changes a monitored item keeps between publishes
    timeout: Duration = 5.0  # for each request, and for connecting
    keepalive: Duration = 5.0  # how often the server's state is read to notice a dead connection
    stale_after: Duration = 15.0  # a subscription silent for this long (not even the clock) is dead
    session_timeout: Duration = 60.0  # how long the server keeps the session of an agent that vanished
    retry_max: Duration = 60.0  # longest wait between two connection attempts
    retry_nodes: Duration = 60.0  # how often a node set aside as invalid is tried again

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _URL.match(value):
            raise ValueError("must look like opc.tcp://192.168.10.30:4840 (optionally with a path)")
        return value

    @field_validator("security")
    @classmethod
    def _security(cls, value: str) -> str:
        if value == "None":
            return value
        policy, _, mode = value.partition("/")
        if policy not in POLICIES or mode not in MODES:
            raise ValueError(f"must be None or <policy>/<mode>: policy one of {', '.join(POLICIES)}, "
                             f"mode Sign or SignAndEncrypt, e.g. Basic256Sha256/SignAndEncrypt")
        return value

    @field_validator("sampling", "timeout", "keepalive", "stale_after", "session_timeout", "retry_max",
                     "retry_nodes")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaConnection:
        if self.secured and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security {self.security} needs the agent's certificate and private_key files")
        if self.stale_after < 2 * max(self.publishing_interval, 1.0):
            raise ValueError("stale_after must be at least twice the publishing interval and at least 2s: "
                             "the server's clock changes only once a second")
        return self

    @property
    def secured(self) -> bool:
        return self.security != "None"

    @property
    def policy(self) -> str | None:
        return self.security.partition("/")[0] if self.secured else None

    @property
    def security_mode(self) -> str | None:
        return self.security.partition("/")[2] if self.secured else None

    @property
    def publishing_interval(self) -> float:
        return self.publishing if self.publishing is not None else self.sampling


class OpcUaTag(Strict):
    """One node: by NodeId (`ns=2;s=Oven02.State`, `nsu=urn:oven:plc;s=...`) or by browse path."""

    node: str | None = None
    path: str | None = None  # e.g. Objects/2:Oven02/2:GoodParts or Objects/<urn:oven:plc>Oven02/...
    index: int | None = Field(None, ge=0)  # one element of an array value
    type: str | None = None  # the data type, e.g. uint32: a counter's wrap width

    @field_validator("node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is not None:
            parse_node_id(value)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_browse_path(value)
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        if value is not None and value not in TYPES:
            raise ValueError(f"must be one of {', '.join(TYPES)}")
        return value

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaTag:
        if self.node is not None and self.path is not None:
            raise ValueError("give node or path, not both")
        if self.node is None and self.path is None:
            raise ValueError("needs node (a NodeId such as ns=2;s=Oven02.GoodParts) or path "
                             "(a browse path such as Objects/2:Oven02/2:GoodParts)")
        return self

    @property
    def address(self) -> str:
        """How the technician wrote it, for messages."""
        text = self.node if self.node is not None else f"path {self.path}"
        return text if self.index is None else f"{text} [{self.index}]"
