"""OPC UA security: the agent's certificate and key, trust in the server's certificate, user tokens.

Trust in the server is decided here, before a secure channel is opened with its certificate:
- `trust: first_use`: the first certificate the server presents is pinned for as long as the agent
  runs, and logged with its thumbprint; a different one later is refused.
- `trust: <folder>`: the certificate must be in that folder (DER or PEM), or be issued by a CA
  certificate in it. The folder is read at every connect, so a certificate added is used at once.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies, uacrypto
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, load_der_private_key, load_pem_private_key

from agent.sources.opcua.config import OpcUaConnection
from agent.sources.opcua.errors import LinkError

log = logging.getLogger(__name__)

_MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
_CERT_SUFFIXES = {".der", ".pem", ".crt", ".cer"}
_DER = Encoding.DER


@dataclass(frozen=True, slots=True)
class Credentials:
    """Secrets of one connection (from the environment or systemd credentials, never the YAML)."""

    username: str | None = None
    password: str | None = None
    key_password: str | None = None


def thumbprint(der: bytes) -> str:
    """SHA-256 of a certificate, as the colon-separated hex most tools show."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def describe_certificate(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return f"SHA-256 {thumbprint(der)}"
    return (f"subject {cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d}, "
            f"SHA-256 {thumbprint(der)}")


def first_certificate(der: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs with its issuers)."""
    if len(der) < 4 or der[0] != 0x30 or der[1] != 0x82:
        return der
    return der[:int.from_bytes(der[2:4], "big") + 4]


class Trust:
    """Whether the certificate a server presents is trusted (see the module docstring)."""

    def __init__(self, setting: str, connection: str, url: str) -> None:
        self.setting = setting
        self.connection = connection
        self.url = url
        self.pinned: bytes | None = None

    def check(self, der: bytes) -> None:
        if self.setting == "first_use":
            self._first_use(der)
        else:
            self._folder(der, Path(self.setting))

    def _first_use(self, der: bytes) -> None:
        if self.pinned is None:
            self.pinned = der
            log.warning("%s: trusting the certificate of the OPC UA server at %s on first use (%s); "
                        "put it into a folder and set trust: to that folder to pin it for good",
                        self.connection, self.url, describe_certificate(der))
        elif der != self.pinned:
            raise LinkError(f"The OPC UA server at {self.url} presented another certificate than the one "
                            f"trusted on first use: {describe_certificate(der)}; expected SHA-256 "
                            f"{thumbprint(self.pinned)}")

    def _folder(self, der: bytes, folder: Path) -> None:
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _CERT_SUFFIXES)
        except OSError as exc:
            raise LinkError(f"Cannot read the trusted certificates folder {folder}: {exc.strerror}") from None
        cert = x509.load_der_x509_certificate(der)
        for path in files:
            for trusted in _load_certificates(path):
                if trusted.public_bytes(_DER) == der or _issued_by(cert, trusted):
                    return
        raise LinkError(f"The OPC UA server at {self.url} presented a certificate that is not trusted "
                        f"({describe_certificate(der)}): copy it into {folder} to trust it")


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except (OSError, ValueError):
        log.debug("skipping %s: not a readable certificate", path)
        return []


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert != ca


# ----------------------------------------------------------------------------------- client


def read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LinkError(f"Cannot read the agent's {what} {path}: {exc.strerror}") from None


def load_certificate(path: str) -> tuple[bytes, x509.Certificate]:
    """The agent's certificate as (DER, parsed), whether the file is DER or PEM."""
    data = read_file(path, "certificate")
    try:
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(data))
    except ValueError:
        raise LinkError(f"The agent's certificate {path} is not a DER or PEM certificate") from None
    return cert.public_bytes(_DER), cert


def check_private_key(path: str, password: str | None) -> bytes:
    data = read_file(path, "private key")
    secret = password.encode() if password else None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            load_pem_private_key(data, secret)
        else:
            load_der_private_key(data, secret)
    except (ValueError, TypeError) as exc:
        raise LinkError(f"Cannot load the agent's private key {path}: {exc}") from None
    return data


def application_uri(cert: x509.Certificate | None) -> str:
    """The URI in the certificate (servers check that it matches the one the client announces)."""
    if cert is not None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if uris:
                return str(uris[0])
        except x509.ExtensionNotFound:
            pass
    return f"urn:{socket.gethostname()}:prodsmart-edge"


def new_client(cfg: OpcUaConnection, url: str | None = None) -> Client:
    """A fresh client. asyncua's own reconnection stays off: the source alone reconnects, with a fresh
    client each time, because asyncua's reconnect can hang and two layers retrying would race."""
    client = Client(url or cfg.url, timeout=cfg.timeout, watchdog_intervall=cfg.keepalive,
                    auto_reconnect=False)
    client.name = client.description = "prodsmart-edge"
    client.product_uri = "urn:prodsmart-edge"
    client.session_timeout = round(cfg.session_timeout * 1000)
    client.application_uri = application_uri(None)
    return client


async def secure(client: Client, cfg: OpcUaConnection, creds: Credentials, trust: Trust) -> bytes | None:
    """Set up the security of `client` for `cfg`; returns the server's certificate (None without security).

    Asks the server for its endpoints over an unsecured channel (the only way to learn its
    certificate), checks that certificate with `trust`, then loads the agent's certificate and key.
    """
    if creds.username is not None:
        client.set_user(creds.username)
    if creds.password is not None:
        client.set_password(creds.password)
    if not cfg.secured:
        return None
    assert cfg.certificate is not None and cfg.private_key is not None and cfg.policy and cfg.security_mode
    cert_der, cert = load_certificate(cfg.certificate)
    key = check_private_key(cfg.private_key, creds.key_password)
    client.application_uri = application_uri(cert)
    policy: type[security_policies.SecurityPolicy] = getattr(security_policies, f"SecurityPolicy{cfg.policy}")
    mode = _MODES[cfg.security_mode]
    endpoints = await client.connect_and_get_server_endpoints()
    endpoint = _endpoint(endpoints, policy.URI, mode, cfg)
    server_der = first_certificate(endpoint.ServerCertificate or b"")
    if not server_der:
        raise LinkError(f"The OPC UA server at {cfg.url} sent no certificate for {cfg.security}")
    trust.check(server_der)
    await client.set_security(
        policy,
        uacrypto.CertProperties(cert_der, "der"),
        uacrypto.CertProperties(key, "pem" if key.lstrip().startswith(b"-----") else "der",
                                password=creds.key_password),
        server_certificate=uacrypto.CertProperties(server_der, "der"),
        mode=mode,
    )
    return server_der


def _endpoint(endpoints: list[ua.EndpointDescription], policy_uri: str, mode: ua.MessageSecurityMode,
              cfg: OpcUaConnection) -> ua.EndpointDescription:
    for ep in endpoints:
        if ep.SecurityPolicyUri == policy_uri and ep.SecurityMode == mode:
            return ep
    offered = sorted({endpoint_text(ep) for ep in endpoints})
    raise LinkError(f"The OPC UA server at {cfg.url} has no endpoint with security {cfg.security}; "
                    f"it offers: {', '.join(offered) or 'nothing'}")


def endpoint_text(ep: ua.EndpointDescription) -> str:
    """An endpoint's security as the config writes it: None, Basic256Sha256/SignAndEncrypt..."""
    if ep.SecurityMode == ua.MessageSecurityMode.None_:
        return "None"
    policy = (ep.SecurityPolicyUri or "").rpartition("#")[2]
    return f"{policy}/{ep.SecurityMode.name}"
