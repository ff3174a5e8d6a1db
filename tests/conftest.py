"""Fixtures shared by every test module (protocol fixtures live in tests/fixtures_<proto>.py)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.outbox.store import Outbox


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Outbox]:
    """A real outbox on a fresh SQLite file."""
    outbox = await Outbox.open(str(tmp_path / "agent.db"))
    try:
        yield outbox
    finally:
        await outbox.close()
