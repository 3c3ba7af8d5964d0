"""One explanation of each TLS failure, shared by the connector and ``qanat diagnose``.

OpenSSL reports a failed handshake as a verify code or an alert name; the
operator needs to read what is wrong and what to do. :func:`tls_failure`
turns either into an :class:`Explanation` (``detail``: what is wrong,
``fix``: what to do). The connector logs ``str(explanation)`` (both in one
sentence); ``qanat diagnose`` shows them on two lines. Pure: no I/O.
"""

from __future__ import annotations

import errno
import ssl
from dataclasses import dataclass

PROXY_HINT = "or, if this network reaches the internet only through a proxy, use --proxy"

# OpenSSL X509_V_ERR_* codes we explain (ssl.SSLCertVerificationError.verify_code).
_NOT_YET_VALID = 9
_EXPIRED = 10
_UNKNOWN_ISSUER = frozenset(
    {
        2,  # unable to get issuer certificate
        18,  # self-signed certificate
        19,  # self-signed certificate in chain
        20,  # unable to get local issuer certificate
        21,  # unable to verify the first certificate
    }
)
_WRONG_NAME = frozenset({62, 64})  # hostname mismatch, IP address mismatch

# Alerts the gateway sends when it wants a (different) client certificate.
_CLIENT_CERT_MISSING = frozenset({"TLSV13_ALERT_CERTIFICATE_REQUIRED"})
_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)


@dataclass(frozen=True, slots=True)
class Explanation:
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"{self.detail}: {self.fix}"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or getattr(exc, "strerror", None) or exc)


def tls_failure(exc: BaseException, host: str, port: int, tls_ca: str | None = None) -> Explanation:
    """What a failed TLS handshake with ``host:port`` means, and the fix."""
    trust = f"--tls-ca {tls_ca}" if tls_ca else "the system's CA bundle"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message or _reason(exc)
        if code == _EXPIRED:
            return Explanation(
                f"TLS certificate of {host} has expired ({detail})",
                "the gateway's operator must renew it (qanat gateway reloads "
                "--tls-cert/--tls-key on SIGHUP); if it should still be valid, check this "
                "machine's clock",
            )
        if code == _NOT_YET_VALID:
            return Explanation(
                f"TLS certificate of {host} is not valid yet ({detail})",
                "check the clock of this machine and of the gateway (NTP)",
            )
        if code in _WRONG_NAME:
            return Explanation(
                f"TLS certificate of {host} is for another name, not valid for {host!r} ({detail})",
                "connect with the address exactly as shown in the portal, or have the "
                f"gateway's certificate list {host} in its subjectAltName; a TLS-inspecting "
                "proxy that forges certificates can cause this too",
            )
        if code in _UNKNOWN_ISSUER:
            return Explanation(
                f"TLS certificate of {host} was issued by an authority this connector does "
                f"not trust ({detail}): its chain does not lead to a CA trusted by {trust}",
                "if a TLS-inspecting firewall or a private CA signs it, pass that CA's "
                "certificate with --tls-ca FILE (PEM) or add it to the system trust store; "
                "for a gateway's development certificate pass that certificate itself with "
                "--tls-ca; a missing intermediate is fixed by serving the full chain",
            )
        return Explanation(
            f"TLS certificate of {host} rejected ({detail})",
            f"check the gateway's certificate against {trust}",
        )
    if isinstance(exc, ssl.SSLError):
        reason = _reason(exc)
        if reason in _CLIENT_CERT_MISSING:
            return Explanation(
                f"gateway {host} requires a client certificate (mutual TLS, {reason})",
                "pass --tls-cert FILE and --tls-key FILE",
            )
        if reason in _CLIENT_CERT_REFUSED:
            return Explanation(
                f"gateway {host} refused this connector's client certificate ({reason})",
                "use a certificate issued by the authority the gateway trusts "
                "(--tls-cert/--tls-key), and check that it has not expired",
            )
        if reason in _NOT_TLS:
            return Explanation(
                f"{host}:{port} does not speak TLS; it answers plain HTTP or another "
                f"protocol ({reason})",
                "use an http:// address if the gateway serves plain HTTP, or check the port",
            )
        return Explanation(
            f"TLS handshake with {host}:{port} failed: {reason}", f"check TLS settings of {host}"
        )
    if isinstance(exc, (ConnectionError, EOFError)) or (
        isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)
    ):
        return Explanation(
            "connection closed during the TLS handshake: a firewall filtering by server name "
            "(SNI) or a TLS-inspecting proxy cut it",
            f"ask for {host} to be allowed (not inspected) on outbound HTTPS, {PROXY_HINT}",
        )
    return Explanation(
        f"TLS handshake with {host}:{port} failed: {exc}", f"check TLS settings of {host}"
    )


def silent_close(host: str, has_client_cert: bool) -> Explanation:
    """Why a gateway may close a TLS connection without a word, and the fix.

    A TLS 1.3 server checks the client certificate after the client thinks
    the handshake is done; many servers then just close the connection, so
    this is what a mutual-TLS refusal usually looks like from the connector.
    """
    closed = f"gateway {host} closed the connection right after the TLS handshake without answering"
    if has_client_cert:
        return Explanation(
            f"{closed}: it probably refused this connector's client certificate",
            "use a certificate issued by the authority the gateway trusts "
            "(--tls-cert/--tls-key) and check that it has not expired",
        )
    return Explanation(
        f"{closed}: it probably requires a client certificate (mutual TLS)",
        "pass --tls-cert FILE and --tls-key FILE",
    )
