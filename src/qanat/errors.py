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
    │   └── RemotesRejected    the gateway refused the declared remotes
    └── ChannelOpenFailed      one app connection could not be carried

Foreign exceptions (asyncssh, websockets, OSError) are translated at the
adapter boundary in ``qanat.net`` so that the rest of the code only sees
these.
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
        retry_after_s: the gateway's Retry-After (seconds), if it sent one.
    """

    def __init__(
        self, message: str, *, status: int = 0, body: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s


class AuthError(HandshakeError):
    """The gateway refused the token (HTTP 401/403)."""


class RemotesRejected(TunnelError):
    """The gateway refused the `config` request (the declared remotes)."""


class ChannelOpenFailed(QanatError):
    """An SSH channel for one app connection could not be opened.

    Attributes:
        reason: the peer's explanation (for a qanat connector, the dial error).
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
