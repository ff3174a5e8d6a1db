"""How the uplink classes what happened to one request: sent or not, refused for what, and by whom.

`classify` turns an answer into a verdict that `agent.uplink.client.Uplink._settle` settles:
- "delivered" (2xx): acknowledged;
- "retry_unknown" (5xx, 408): retried with backoff on that machine's lane only, marked "unknown
  outcome" (it may have been applied); a network error or timeout is the same if the request
  may have left (`may_have_arrived`), else "retry_not_sent";
- "retry_not_sent" (1xx/3xx: a misconfigured URL, not the call's fault; a failing token
  request, whatever its status: the machine call never left);
- "rate_limited" (429): every lane waits for Retry-After;
- "auth" (401, or a 403 to the token request): every lane waits, probing about once a minute
  (bad credentials never turn the queue into dead letters);
- "forbidden" (403 to one machine's call): that machine alone waits, with an alert naming it;
  a second machine refused before any call got through turns it into "auth";
- "refused" (any other 4xx): a dead letter, and the lane goes on; except a 400 "not increasing"
  to a counter call an earlier attempt with an unknown outcome may have applied (delivered:
  DESIGN.md, the one rule, point 4), and a 400 to a counter call carrying parameters (the
  parameters alone become a dead letter, the count goes again without them).
"""

from __future__ import annotations

from typing import Literal

import httpx

Verdict = Literal["delivered", "retry_unknown", "retry_not_sent", "rate_limited", "auth", "forbidden",
                  "refused"]

# Errors raised before the request left this machine: Prodsmart cannot have applied it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
            httpx.LocalProtocolError)


def classify(status: int, *, for_token: bool) -> Verdict:
    """The verdict on an HTTP answer (see the module docstring)."""
    if status == 429:
        return "rate_limited"
    if status == 401 or (status == 403 and for_token):
        return "auth"
    if status == 403:
        return "forbidden"
    if for_token:
        return "retry_not_sent"
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status == 408:
        return "retry_unknown"
    if 400 <= status < 500:
        return "refused"
    return "retry_not_sent"


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
