"""chisel's remote grammar, as pure code.

A remote says which gateway-side port carries traffic to which private
endpoint. The grammar is chisel's ``settings.DecodeRemote``; parts are
separated by ``:``, IPv6 hosts stand in brackets, and the parts are read from
the back so that the remote side supplies the defaults::

    3000                        local 0.0.0.0:3000   remote 127.0.0.1:3000
    example.com:3000            local 0.0.0.0:3000   remote example.com:3000
    3000:example.com:80         local 0.0.0.0:3000   remote example.com:80
    192.168.0.1:3000:google:80  local 192.168.0.1:3000 remote google:80
    R:8081:10.0.0.5:8393        the same, reversed (the gateway listens)
    R:8053:10.0.0.2:53/udp      UDP
    R:8080:[::1]:80             IPv6 target
    127.0.0.1:1080:socks        SOCKS (a gateway refuses it)
    stdio:example.com:22        stdio (a gateway refuses it)

qanat is stricter than chisel in one way: characters that chisel's regular
expression silently skips (a stray ``[``) are an error here, so a typo never
becomes a different remote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qanat.errors import RemoteSyntaxError

REVERSE_PREFIX = "R:"
_PART = re.compile(r"(\[[^\[\]]+\]|[^\[\]:]+)(:?)")
_L4 = re.compile(r"/(tcp|udp)\Z", re.IGNORECASE)
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})\Z")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]\Z")
#: Longest remote string accepted (chisel has no limit; we want one).
MAX_REMOTE_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Remote:
    """One decoded remote. Ports stay strings, as on the wire."""

    local_host: str
    local_port: str
    local_proto: str
    remote_host: str
    remote_port: str
    remote_proto: str
    socks: bool = False
    reverse: bool = False
    stdio: bool = False

    @property
    def target(self) -> str:
        """``host:port`` the connector dials (chisel's ``Remote()``)."""
        return f"{self.remote_host}:{self.remote_port}"

    @property
    def channel_extra(self) -> bytes:
        """Extra data of the ``chisel`` channel that carries this remote."""
        suffix = "/udp" if self.remote_proto == "udp" else ""
        return f"{self.target}{suffix}".encode()

    def __str__(self) -> str:
        """The canonical text form, which :func:`decode_remote` reads back."""
        # Like chisel's Encode: the local half is "stdio" or host:port, the
        # remote half "socks" or host:port with the protocol suffix.
        head = REVERSE_PREFIX if self.reverse else ""
        local = "stdio" if self.stdio else f"{self.local_host}:{self.local_port}"
        suffix = "/udp" if self.remote_proto == "udp" else ""
        remote = "socks" if self.socks else f"{self.remote_host}:{self.remote_port}{suffix}"
        return f"{head}{local}:{remote}"

    def describe(self) -> str:
        """Operator-facing form: ``R:8081 => 10.0.0.5:8393``."""
        arrow = "R:" if self.reverse else ""
        proto = "/udp" if self.remote_proto == "udp" else ""
        if self.socks:
            return f"{arrow}{self.local_host}:{self.local_port}=>socks"
        return f"{arrow}{self.local_port}=>{self.target}{proto}"


_ATOI = re.compile(r"[+-]?[0-9]+")


def port_problem(text: str) -> str | None:
    """Why ``text`` is not a port as chisel reads one, or None when it is one.

    chisel's peers read ports with Go's ``strconv.Atoi`` (an optional ``+``
    or ``-``, then ASCII digits only: no spaces, no line breaks, no ``_``, no
    other scripts' digits), then need 1-65535. Python's ``int()`` is far more
    lenient (``int(" 8_081\n")`` is 8081, fullwidth digits too), so every
    port crossing the wire goes through here first. Pure; the reason reads
    after the value (``'8_081' has an underscore ...``).
    """
    if not text:
        return "is empty"
    if _ATOI.fullmatch(text) is None:
        if any(c.isspace() for c in text):
            return "has spaces or line breaks (Go's strconv.Atoi refuses them)"
        if any(c.isdigit() and not c.isascii() for c in text):
            return "has non-ASCII digits (Go's strconv.Atoi reads only 0-9)"
        if "_" in text:
            return "has an underscore (Go's strconv.Atoi takes no digit separators)"
        return "is not a decimal number (Go's strconv.Atoi refuses it)"
    significant = text.lstrip("+-").lstrip("0")  # Atoi takes any number of leading zeros
    if len(significant) > 5 or not 0 < int(text) <= 65535:
        return "is outside 1-65535"
    return None


def canonical_port(text: str) -> str:
    """A port :func:`port_problem` accepts, as chisel prints it (``+08081`` -> ``8081``)."""
    return str(int(text))


def _is_port(text: str) -> bool:
    return port_problem(text) is None


def _is_host(text: str) -> bool:
    return bool(_IPV6.match(text) or _HOSTNAME.match(text))


def _split_proto(text: str) -> tuple[str, str]:
    match = _L4.search(text)
    if match is None:
        return text, ""
    return text[: match.start()].lower(), match.group(1).lower()


def decode_remote(text: str) -> Remote:
    """Parse one remote string.

    Raises:
        RemoteSyntaxError: with a message naming the remote and what is wrong.
    """
    original = text
    if len(text) > MAX_REMOTE_CHARS:
        raise RemoteSyntaxError(f"remote is {len(text)} characters long (limit {MAX_REMOTE_CHARS})")
    reverse = text.startswith(REVERSE_PREFIX)
    if reverse:
        text = text[len(REVERSE_PREFIX) :]

    parts: list[str] = []
    pos = 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            raise RemoteSyntaxError(
                f"invalid remote {original!r}: unexpected {text[pos : match.start()]!r}"
            )
        parts.append(match.group(1))
        pos = match.end()
    if pos != len(text) or not parts or text.endswith(":"):
        where = "trailing ':'" if text.endswith(":") else f"unexpected {text[pos:]!r}"
        if not parts:
            where = "empty"
        raise RemoteSyntaxError(f"invalid remote {original!r}: {where}")
    if len(parts) >= 5:
        raise RemoteSyntaxError(
            f"invalid remote {original!r}: {len(parts)} parts, at most 4 "
            "([local-host:]local-port:remote-host:remote-port)"
        )

    socks = stdio = False
    local_host = local_port = local_proto = ""
    remote_host = remote_port = remote_proto = ""
    last = len(parts) - 1
    for index in range(last, -1, -1):
        part = parts[index]
        if index == last and part == "socks":
            socks = True
            continue
        if index == 0 and part == "stdio":
            stdio = True
            continue
        part, proto = _split_proto(part)
        if proto:
            if not remote_port:
                remote_proto = proto
            elif not local_proto:
                local_proto = proto
        if _is_port(part):
            if not socks and not remote_port:
                remote_port = part
            local_port = part
            continue
        if re.fullmatch(r"[+-]?[0-9]+", part):
            raise RemoteSyntaxError(f"invalid remote {original!r}: port {part} is not in 1-65535")
        if not socks and not remote_port and not local_port:
            raise RemoteSyntaxError(f"invalid remote {original!r}: missing port")
        if not _is_host(part):
            raise RemoteSyntaxError(f"invalid remote {original!r}: {part!r} is not a host or port")
        if not socks and not remote_host:
            remote_host = part
        else:
            local_host = part

    if not socks and not remote_port:
        # Only a bare "stdio" gets here; chisel accepts it with no port at all.
        raise RemoteSyntaxError(f"invalid remote {original!r}: missing port")
    if socks:
        local_host = local_host or "127.0.0.1"
        local_port = local_port or "1080"
    else:
        local_host = local_host or "0.0.0.0"
        remote_host = remote_host or "127.0.0.1"
    remote_proto = remote_proto or "tcp"
    local_proto = local_proto or remote_proto
    if local_proto != remote_proto:
        raise RemoteSyntaxError(f"invalid remote {original!r}: cross-protocol remotes (tcp<->udp)")
    if socks and remote_proto != "tcp":
        raise RemoteSyntaxError(f"invalid remote {original!r}: only TCP SOCKS is supported")
    if stdio and reverse:
        raise RemoteSyntaxError(f"invalid remote {original!r}: stdio cannot be reversed")
    return Remote(
        local_host=local_host,
        local_port=canonical_port(local_port) if local_port else local_port,
        local_proto=local_proto,
        remote_host=remote_host,
        remote_port=canonical_port(remote_port) if remote_port else remote_port,
        remote_proto=remote_proto,
        socks=socks,
        reverse=reverse,
        stdio=stdio,
    )


def decode_remotes(texts: Iterable[str]) -> list[Remote]:
    """Parse the remotes of one connector, as outsystemscc does.

    Beyond chisel's per-remote grammar, two remotes may not share a local
    port (outsystemscc refuses that too).

    Raises:
        RemoteSyntaxError: naming the offending remote.
    """
    remotes: list[Remote] = []
    seen: dict[tuple[str, str], str] = {}
    for text in texts:
        remote = decode_remote(text)
        key = (remote.local_port, remote.local_proto)
        if key in seen:
            raise RemoteSyntaxError(
                f"remote {text!r} uses local port {remote.local_port} "
                f"already used by {seen[key]!r}; each remote needs its own port"
            )
        seen[key] = text
        remotes.append(remote)
    return remotes


def ports_query(remotes: Sequence[Remote]) -> str:
    """The ``ports`` query value outsystemscc sends: local ports, comma-separated."""
    return ",".join(r.local_port for r in remotes)
