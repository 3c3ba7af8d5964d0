"""The qanat exception tree.

Every error a user can meet is one of these, with a message that names the
thing that went wrong and what to do about it::

    QanatError
    ├── ConfigError            bad command line, file or environment value
    │   └── RemoteSyntaxError  a remote like R:8081:host:80 that does not parse
    ├── ProtocolError          the peer broke the wire protocol
    │   ├── LocalProtocolError   we were asked to send something invalid
    │   └── RemoteProtocolError  the peer sent something invalid
    │       └── GobError         a malformed UDP gob stream (qanat.wire.gob)
    ├── TunnelError            a tunnel could not be set up or was lost
    │   ├── HandshakeError     HTTP/WebSocket upgrade refused or malformed
    │   │   └── AuthError      the gateway rejected the token
    │   ├── ProxyError         the HTTP CONNECT or SOCKS5 proxy refused or failed
    │   ├── TlsError           the TLS handshake failed (certificate problems)
    │   └── RemotesRejected    the gateway refused the declared remotes
    ├── ChannelOpenFailed      one app connection could not be carried
    ├── PortalError            a portal operation was refused
    │   ├── NotFound           no such organisation, stage, user or API key
    │   ├── Conflict           the request contradicts the current state
    │   ├── Forbidden          authenticated, but the role does not allow it
    │   ├── Unauthorized       no valid credentials (password, API key)
    │   └── InvalidInput       a name, address or value that is malformed
    │       └── TooLarge         over its named size limit (an OpenAPI upload)
    └── StoreError             the database could not do what was asked
        ├── DatabaseBusy       locked by another writer past the busy timeout
        ├── DatabaseUnreachable  cannot connect or open the database
        └── MigrationError     the schema could not be brought up to date

Foreign exceptions (websockets, OSError) are translated at the
adapter boundary in ``qanat.net``, and database exceptions in ``qanat.store``,
so that the rest of the code only sees these.
"""

from __future__ import annotations


class QanatError(Exception):
    """Base class of every error qanat raises on purpose."""


class ConfigError(QanatError):
    """A configuration value (flag, file, environment) is invalid."""


class RemoteSyntaxError(ConfigError):
    """A remote specification does not follow chisel's grammar."""


class ProtocolError(QanatError):
    """The wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We were asked to produce something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class GobError(RemoteProtocolError):
    """The peer's UDP channel is not a valid gob stream of ``udpPacket`` values."""


class TunnelError(QanatError):
    """A tunnel could not be established or was lost."""


class HandshakeError(TunnelError):
    """The HTTP/WebSocket upgrade failed.

    Attributes:
        status: HTTP status of the refusal, or 0 when there was no response.
        body: the (short) response body the gateway sent, if any.
        no_answer: the connection closed before a single byte of answer (a
            TLS server refusing a client certificate looks like this).
        retry_after_s: the gateway's Retry-After (seconds), if it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        body: str = "",
        no_answer: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.no_answer = no_answer
        self.retry_after_s = retry_after_s


class AuthError(HandshakeError):
    """The gateway refused the token (HTTP 401/403)."""


class ProxyError(TunnelError):
    """The proxy between the connector and the gateway refused or failed.

    Attributes:
        status: the proxy's HTTP status (HTTP CONNECT), or 0.
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TlsError(TunnelError):
    """The TLS handshake with the gateway failed; the message names the fix."""


class RemotesRejected(TunnelError):
    """The gateway refused the `config` request (the declared remotes)."""


class ChannelOpenFailed(QanatError):
    """An SSH channel for one app connection could not be opened.

    Attributes:
        reason: the peer's explanation (for a qanat connector, the dial error).
        code: the SSH reason code (RFC 4254: 1 administratively prohibited,
            2 connect failed, 3 unknown channel type, 4 resource shortage);
            on the refusing side, what to send; 0 when there was no answer.
    """

    ADMINISTRATIVELY_PROHIBITED = 1
    CONNECT_FAILED = 2

    def __init__(self, message: str, *, reason: str = "", code: int = CONNECT_FAILED) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


class PortalError(QanatError):
    """A portal operation was refused; the message says why and what to do."""


class NotFound(PortalError):
    """The organisation, stage, user or API key named does not exist."""


class Conflict(PortalError):
    """The operation contradicts the current state (duplicate, inactive, ...)."""


class Forbidden(PortalError):
    """The actor is known but its role does not allow the operation."""


class Unauthorized(PortalError):
    """The credentials (password, API key) are missing, wrong, expired or revoked."""


class InvalidInput(PortalError):
    """A value given to the portal is malformed."""


class TooManyAttempts(PortalError):
    """Sign-in refused for now: too many failures, or too many in progress.

    Attributes:
        retry_after_s: when to try again.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooLarge(InvalidInput):
    """A value given to the portal is larger than its named limit (HTTP 413)."""


class StoreError(QanatError):
    """The database failed; nothing of the operation was written."""


class DatabaseBusy(StoreError):
    """Another writer held the database lock longer than the busy timeout."""


class DatabaseUnreachable(StoreError):
    """The database cannot be opened or connected to."""


class MigrationError(StoreError):
    """The schema could not be upgraded; the database is left as it was."""
