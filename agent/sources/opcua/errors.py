"""The one error type of the OPC UA source, and the one place where asyncua's exceptions become it.

    LinkError            the session with the server cannot go on (or cannot start); its text is a
                         plain sentence for a technician first, the OPC UA detail after. The source
                         reports it, drops the client, waits (backoff with jitter) and starts afresh.

Everything asyncua raises (OSError, TimeoutError, ua.UaStatusCodeError and its per-status
subclasses, ua.UaError, ConnectionError) is turned into a LinkError by `link_error()`.
"""

from __future__ import annotations

import asyncio
import os

from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError

_AUTH = {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"}
_CERT = {"BadSecurityChecksFailed", "BadCertificateUntrusted", "BadCertificateInvalid",
         "BadCertificateUriInvalid", "BadCertificateUseNotAllowed", "BadCertificateTimeInvalid",
         "BadCertificateRevoked", "BadCertificateIssuerRevoked", "BadSecurityPolicyRejected",
         "BadNonceInvalid", "BadApplicationSignatureInvalid"}


class LinkError(Exception):
    """The session with the OPC UA server failed; `str()` is the sentence to report."""


def link_error(exc: BaseException, url: str, *, anonymous: bool = True, certificate: str | None = None,
               timeout: float = 0.0) -> LinkError:
    """Map any exception of a request to the server to a LinkError that says what to do."""
    if isinstance(exc, LinkError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        return _status_error(ua.StatusCode(exc.code).name, url, anonymous, certificate)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        within = f" within {timeout:g}s" if timeout else ""
        return LinkError(f"The OPC UA server at {url} did not answer{within}")
    if isinstance(exc, ConnectionError) and exc.errno is None:  # asyncua's own, not the system's
        return LinkError(f"Lost the connection to the OPC UA server at {url}: {exc}")
    if isinstance(exc, OSError):
        # asyncio's text is "Connect call failed ('1.2.3.4', 4840)": the system's words say more.
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
        return LinkError(f"Cannot reach the OPC UA server at {url}: {reason}")
    return LinkError(f"The OPC UA server at {url} cannot be used: {type(exc).__name__}: {exc}")


def _status_error(name: str, url: str, anonymous: bool, certificate: str | None) -> LinkError:
    if name in _AUTH:
        if anonymous:
            return LinkError(f"The OPC UA server at {url} refused an anonymous session ({name}): "
                             "set auth: username and give the user name and password")
        return LinkError(f"The OPC UA server at {url} refused the user name or password ({name})")
    if name in _CERT:
        what = f"the agent's certificate {certificate}" if certificate else "the agent's certificate"
        return LinkError(f"The OPC UA server at {url} does not accept {what} ({name}): "
                         "add it to the server's trusted certificates")
    if name == "BadTooManySessions":
        return LinkError(f"The OPC UA server at {url} has no room for another session ({name})")
    if name in ("BadSessionIdInvalid", "BadSessionClosed", "BadSessionNotActivated"):
        return LinkError(f"The OPC UA server at {url} closed the session ({name})")
    return LinkError(f"The OPC UA server at {url} refused a request ({name})")
