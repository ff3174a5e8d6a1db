"""Who may see the console: anyone on a loopback listener; elsewhere only with the console token.

On a listener that other machines can reach, the console and its JSON need
PRODSMART_EDGE_CONSOLE_TOKEN (from the environment, an env file or a systemd credential):
as `Authorization: Bearer <token>`, or through the login form, which sets an HttpOnly cookie
holding a value derived from the token (never the token itself). Without a token the console
is off there. Every comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from typing import Literal

COOKIE = "prodsmart_console"
MIN_TOKEN = 16  # characters; a shorter token is refused (the console stays off)

Mode = Literal["open", "token", "off"]


def is_loopback(listen: str) -> bool:
    """Whether `HOST:PORT` only accepts connections from this machine."""
    return _loopback_name(listen.rpartition(":")[0])


def _loopback_name(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class Gate:
    """The console's door for one listener."""

    def __init__(self, listen: str, token: str | None) -> None:
        self.loopback = is_loopback(listen)
        usable = token is not None and len(token) >= MIN_TOKEN
        self.mode: Mode = "open" if self.loopback else "token" if usable else "off"
        self._token = (token or "").encode()
        self._session = hmac.new(self._token, b"prodsmart-edge console session", hashlib.sha256).hexdigest()

    @property
    def weak_token(self) -> bool:
        return not self.loopback and bool(self._token) and self.mode == "off"

    def token_matches(self, offered: str) -> bool:
        return self.mode == "token" and hmac.compare_digest(offered.encode(), self._token)

    def allows(self, headers: Mapping[str, str]) -> bool:
        """Whether a request with these headers (lower-case names) may see the console.

        On loopback the Host header must name this machine too: a web page that re-points its own
        domain name at 127.0.0.1 (DNS rebinding) must not read the console from the line PC's browser."""
        if self.mode != "token":
            return self.mode == "open" and host_is_loopback(headers.get("host", ""))
        scheme, _, offered = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(offered.strip()):
            return True
        cookie = cookies(headers.get("cookie", "")).get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def session_cookie(self) -> str:
        return f"{COOKIE}={self._session}; HttpOnly; SameSite=Strict; Path=/"


def host_is_loopback(host: str) -> bool:
    """Whether a Host header (`name`, `name:port`, `[::1]:port`) names this machine."""
    name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    return _loopback_name(name)


def cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(name, value)
    return out
