"""How the uplink classes what happened to one request: sent or not, refused for what, and by whom."""

from __future__ import annotations

import httpx

# Errors raised before the request left this machine: Prodsmart cannot have applied it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
            httpx.LocalProtocolError)


def is_token_request(request: httpx.Request, auth_url: str) -> bool:
    """The request is the access-token request of the auth flow, not the machine call itself."""
    return request.url.path == httpx.URL(auth_url).path


def may_have_arrived(exc: httpx.HTTPError, auth_url: str) -> bool:
    """Whether the machine call may have reached Prodsmart although no answer came.

    A failing token request ends the auth flow before the machine call is sent (or after it
    was answered 401, which applies nothing): the call never arrived. Only a failure of the
    machine request itself, once it may have left, leaves its outcome unknown."""
    if isinstance(exc, NOT_SENT):
        return False
    try:
        request = exc.request
    except RuntimeError:  # no request attached: raised before one was built
        return False
    return not is_token_request(request, auth_url)


def excerpt(text: str, limit: int = 200) -> str:
    """The first `limit` characters of a response, on one line, for a log message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
