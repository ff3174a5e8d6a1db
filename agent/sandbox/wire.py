"""A request as the sandbox sees it, and what to do about it (an Outcome), free of sockets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-encoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """Answer (after `hold` seconds), or abort the connection without answering (`drop`)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    hold: float = 0.0
    drop: bool = False


def json_outcome(status: int, payload: Any) -> Outcome:
    return Outcome(status, json.dumps(payload).encode())


def text_outcome(status: int, text: str) -> Outcome:
    return Outcome(status, text.encode(), "text/plain; charset=utf-8")
