"""What an MQTT link is given and what it raises: its settings, its errors, the broker's grants.

Errors: `LinkError` (with a plain `sentence` for the technician and a technical `detail`);
`ConnectRefused` when the broker answers CONNACK with an error (bad credentials...);
`LinkLost` when an established connection drops.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass


class LinkError(Exception):
    """The broker cannot be used right now: `sentence` for people, `detail` for the debug log."""

    def __init__(self, sentence: str, detail: str = "") -> None:
        super().__init__(f"{sentence} ({detail})" if detail else sentence)
        self.sentence = sentence
        self.detail = detail


class ConnectRefused(LinkError):
    """The broker answered the connection with an error code (credentials, client id...)."""


class LinkLost(LinkError):
    """An established connection dropped."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    host: str
    port: int
    client_id: str
    protocol: str  # "3.1.1" | "5"
    keepalive: int
    connect_timeout: float
    persistent: bool = True  # clean_session=False / clean_start=False: the broker queues for us
    session_expiry: int = 7 * 86400  # MQTT 5 only
    username: str | None = None
    password: str | None = None
    tls: Callable[[], ssl.SSLContext] | None = None  # built in the worker thread (reads files)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Granted:
    """The broker's answer to one topic filter of a SUBSCRIBE: the QoS it grants, or None."""

    topic_filter: str
    qos: int | None
    reason: str
