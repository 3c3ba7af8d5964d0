"""Errors of the SSH core, each carrying an SSH disconnect reason code.

::

    qanat.errors.ProtocolError
    ├── LocalProtocolError
    │   └── SshLocalError        we were asked to do something SSH forbids
    │                            (send on a closed channel, overfill a buffer)
    └── RemoteProtocolError
        └── SshRemoteError       the peer broke SSH (bad packet, bad MAC,
            │                    wrong message in this state, no common
            │                    algorithm, bad host key signature)
            └── SshDisconnected  the peer sent SSH_MSG_DISCONNECT

``code`` is the SSH_DISCONNECT_* reason (RFC 4253 §11.1) that goes out in
our SSH_MSG_DISCONNECT when we end the connection for that error, or the
peer's code for :class:`SshDisconnected`.
"""

from __future__ import annotations

from qanat.errors import LocalProtocolError, RemoteProtocolError

DISCONNECT_HOST_NOT_ALLOWED_TO_CONNECT = 1
DISCONNECT_PROTOCOL_ERROR = 2
DISCONNECT_KEY_EXCHANGE_FAILED = 3
DISCONNECT_MAC_ERROR = 5
DISCONNECT_SERVICE_NOT_AVAILABLE = 7
DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED = 8
DISCONNECT_HOST_KEY_NOT_VERIFIABLE = 9
DISCONNECT_CONNECTION_LOST = 10
DISCONNECT_BY_APPLICATION = 11
DISCONNECT_TOO_MANY_CONNECTIONS = 12
DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE = 14


class SshLocalError(LocalProtocolError):
    """The caller asked the core for something SSH does not allow."""

    def __init__(self, message: str, code: int = DISCONNECT_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class SshRemoteError(RemoteProtocolError):
    """The peer sent something SSH does not allow; the connection is over."""

    def __init__(self, message: str, code: int = DISCONNECT_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class SshDisconnected(SshRemoteError):
    """The peer ended the connection with SSH_MSG_DISCONNECT(code, text)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"peer disconnected (code {code}): {text or 'no reason given'}", code)
        self.text = text
