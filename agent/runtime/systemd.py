"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING) over $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends sd_notify datagrams; a no-op when not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # An address starting with '@' is in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Never block the event loop on a slow reader: a lost STATUS= is harmless.
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            pass  # systemd busy (EAGAIN) or gone (shutdown): nothing useful to do

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds, if systemd asked for keep-alive pings for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1_000_000 / 2

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
