"""chisel's remote grammar: table tests, error cases and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.errors import RemoteSyntaxError
from qanat.wire.remotes import MAX_REMOTE_CHARS, Remote, decode_remote, decode_remotes, ports_query


def remote(
    local: str,
    remote_: str,
    proto: str = "tcp",
    *,
    socks: bool = False,
    reverse: bool = False,
    stdio: bool = False,
) -> Remote:
    """Build the expected Remote from ``host:port`` halves (IPv6 in brackets)."""
    local_host, _, local_port = local.rpartition(":")
    remote_host, _, remote_port = remote_.rpartition(":")
    return Remote(
        local_host=local_host,
        local_port=local_port,
        local_proto=proto,
        remote_host=remote_host,
        remote_port=remote_port,
        remote_proto=proto,
        socks=socks,
        reverse=reverse,
        stdio=stdio,
    )


VALID = [
    # The module docstring's examples.
    ("3000", remote("0.0.0.0:3000", "127.0.0.1:3000")),
    ("example.com:3000", remote("0.0.0.0:3000", "example.com:3000")),
    ("3000:example.com:80", remote("0.0.0.0:3000", "example.com:80")),
    ("192.168.0.1:3000:google:80", remote("192.168.0.1:3000", "google:80")),
    ("R:8081:10.0.0.5:8393", remote("0.0.0.0:8081", "10.0.0.5:8393", reverse=True)),
    ("R:8053:10.0.0.2:53/udp", remote("0.0.0.0:8053", "10.0.0.2:53", "udp", reverse=True)),
    ("R:8080:[::1]:80", remote("0.0.0.0:8080", "[::1]:80", reverse=True)),
    ("127.0.0.1:1080:socks", Remote("127.0.0.1", "1080", "tcp", "", "", "tcp", socks=True)),
    ("stdio:example.com:22", remote("0.0.0.0:22", "example.com:22", stdio=True)),
    # The PROTOCOL.md example.
    ("R:18082:127.0.0.1:18000", remote("0.0.0.0:18082", "127.0.0.1:18000", reverse=True)),
    # IPv6 on both sides, with a zone.
    ("[::1]:8080:[fe80::1%eth0]:80", remote("[::1]:8080", "[fe80::1%eth0]:80")),
    ("[2001:db8::5]:443", remote("0.0.0.0:443", "[2001:db8::5]:443")),
    ("R:[::]:9000:[::ffff:10.0.0.1]:22", remote("[::]:9000", "[::ffff:10.0.0.1]:22", reverse=True)),
    # UDP, explicit TCP, case of the suffix.
    ("53/udp", remote("0.0.0.0:53", "127.0.0.1:53", "udp")),
    ("1.1.1.1:53/udp", remote("0.0.0.0:53", "1.1.1.1:53", "udp")),
    ("5353:dns:53/UDP", remote("0.0.0.0:5353", "dns:53", "udp")),
    ("5353/udp:dns:53/udp", remote("0.0.0.0:5353", "dns:53", "udp")),
    ("8080:web:80/tcp", remote("0.0.0.0:8080", "web:80")),
    # SOCKS defaults.
    ("socks", Remote("127.0.0.1", "1080", "tcp", "", "", "tcp", socks=True)),
    ("5000:socks", Remote("127.0.0.1", "5000", "tcp", "", "", "tcp", socks=True)),
    ("R:socks", Remote("127.0.0.1", "1080", "tcp", "", "", "tcp", socks=True, reverse=True)),
    ("[::1]:1080:socks", Remote("[::1]", "1080", "tcp", "", "", "tcp", socks=True)),
    # stdio defaults.
    ("stdio:22", remote("0.0.0.0:22", "127.0.0.1:22", stdio=True)),
    ("stdio:dns:53/udp", remote("0.0.0.0:53", "dns:53", "udp", stdio=True)),
    ("stdio:socks", Remote("127.0.0.1", "1080", "tcp", "", "", "tcp", socks=True, stdio=True)),
    # Ports are normalised the way Go's strconv.Atoi reads them.
    ("0080", remote("0.0.0.0:80", "127.0.0.1:80")),
    ("+443:web:8443", remote("0.0.0.0:443", "web:8443")),
    ("65535:h:1", remote("0.0.0.0:65535", "h:1")),
    # Host names keep their case and may look like keywords in other positions.
    ("HOST:80", remote("0.0.0.0:80", "HOST:80")),
    ("3000:socks:80", remote("0.0.0.0:3000", "socks:80")),
    ("3000:stdio:80", remote("0.0.0.0:3000", "stdio:80")),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_decode_valid(text: str, expected: Remote) -> None:
    got = decode_remote(text)
    assert got == expected
    assert decode_remote(str(got)) == got


def test_remote_properties() -> None:
    r = decode_remote("R:8053:10.0.0.2:53/udp")
    assert r.target == "10.0.0.2:53"
    assert r.channel_extra == b"10.0.0.2:53/udp"
    assert r.describe() == "R:8053=>10.0.0.2:53/udp"
    assert str(r) == "R:0.0.0.0:8053:10.0.0.2:53/udp"
    tcp = decode_remote("8080:[::1]:80")
    assert tcp.channel_extra == b"[::1]:80"
    assert tcp.describe() == "8080=>[::1]:80"
    assert decode_remote("socks").describe() == "127.0.0.1:1080=>socks"


INVALID = [
    ("", "empty"),
    ("R:", "empty"),
    ("1:2:3:4:5", "5 parts"),
    ("a:1:b:2:c:3", "6 parts"),
    ("3000:", "trailing ':'"),
    ("R:8080:x:80/udp:", "trailing ':'"),
    ("0", "port 0 is not in 1-65535"),
    ("70000", "port 70000 is not in 1-65535"),
    ("3000:h:0", "port 0 is not in 1-65535"),
    ("3000:h:65536", "port 65536"),
    ("-1", "port -1"),
    ("R:stdio:h:22", "stdio cannot be reversed"),
    ("stdio", "missing port"),
    ("3000/udp:h:4000/tcp", "cross-protocol"),
    ("3000/tcp:h:53/udp", "cross-protocol"),
    ("1080:socks/udp", "missing port"),
    ("udp", "missing port"),
    ("example.com", "missing port"),
    ("3000:[::1]", "missing port"),
    ("[::1", "unexpected"),
    ("a[b:80", "unexpected '['"),
    ("3000:h]:80", "unexpected ']:'"),
    ("[[::1]]:80", "unexpected"),
    ("::1", "unexpected '::'"),
    ("3000:bad host:80", "'bad host' is not a host or port"),
    ("3000:h!st:80", "is not a host or port"),
    ("3000:[zz::1]:80", "is not a host or port"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID, ids=[t or "<empty>" for t, _ in INVALID])
def test_decode_invalid(text: str, fragment: str) -> None:
    with pytest.raises(RemoteSyntaxError) as info:
        decode_remote(text)
    message = str(info.value)
    assert fragment in message
    if text:
        assert repr(text) in message  # the message names the remote


def test_decode_too_long() -> None:
    text = "3000:" + "a" * MAX_REMOTE_CHARS + ":80"
    with pytest.raises(RemoteSyntaxError, match="characters long"):
        decode_remote(text)


def test_decode_remotes_and_ports_query() -> None:
    remotes = decode_remotes(["R:18083:10.0.0.5:80", "R:18084:10.0.0.6:443"])
    assert [r.target for r in remotes] == ["10.0.0.5:80", "10.0.0.6:443"]
    assert ports_query(remotes) == "18083,18084"
    assert decode_remotes([]) == []


def test_decode_remotes_duplicate_local_port_names_both() -> None:
    with pytest.raises(RemoteSyntaxError) as info:
        decode_remotes(["R:8080:a:80", "R:9090:b:90", "R:127.0.0.1:8080:c:81"])
    message = str(info.value)
    assert "'R:127.0.0.1:8080:c:81'" in message  # the offender
    assert "'R:8080:a:80'" in message  # and the remote it clashes with
    assert "8080" in message


def test_decode_remotes_same_port_other_protocol_is_allowed() -> None:
    remotes = decode_remotes(["R:8053:dns:53", "R:8053:dns:53/udp"])
    assert [r.local_proto for r in remotes] == ["tcp", "udp"]


def test_decode_remotes_reports_syntax_error_of_one_remote() -> None:
    with pytest.raises(RemoteSyntaxError, match="'R:8080:'"):
        decode_remotes(["R:9000:a:1", "R:8080:"])


# --- hypothesis -------------------------------------------------------------

ports = st.integers(1, 65535).map(str)
names = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9]{1,6}){0,2}", fullmatch=True).filter(
    lambda s: s not in ("socks", "stdio")
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(names, ipv4, ipv6)
# "R" as a local host would read as the reverse prefix; chisel has the same
# ambiguity, so such remotes cannot be written down at all.
local_hosts = hosts.filter(lambda h: h != "r")


@st.composite
def remote_texts(draw: st.DrawFn) -> tuple[str, Remote]:
    """A remote string in one of chisel's forms, and the Remote it means."""
    reverse = draw(st.booleans())
    head = "R:" if reverse else ""
    kind = draw(st.sampled_from(["full", "short", "socks", "stdio"]))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    suffix = draw(st.sampled_from(["", "/tcp"])) if proto == "tcp" else "/udp"
    if kind == "socks":
        lhost, lport = draw(local_hosts), draw(ports)
        form = draw(st.integers(0, 2))
        text = head + [f"{lhost}:{lport}:", f"{lport}:", ""][form] + "socks"
        expect_lhost = lhost if form == 0 else "127.0.0.1"
        expect_lport = lport if form < 2 else "1080"
        expected = Remote(expect_lhost, expect_lport, "tcp", "", "", "tcp", socks=True)
        return text, _with_reverse(expected, reverse)
    rhost, rport = draw(hosts), draw(ports)
    if kind == "stdio":
        text = f"stdio:{rhost}:{rport}{suffix}"
        return text, remote(f"0.0.0.0:{rport}", f"{rhost}:{rport}", proto, stdio=True)
    if kind == "short":
        form = draw(st.integers(0, 1))
        text = head + (f"{rport}{suffix}" if form == 0 else f"{rhost}:{rport}{suffix}")
        host = "127.0.0.1" if form == 0 else rhost
        return text, remote(f"0.0.0.0:{rport}", f"{host}:{rport}", proto, reverse=reverse)
    lhost, lport = draw(st.none() | local_hosts), draw(ports)
    local = f"{lhost}:{lport}" if lhost else lport
    text = f"{head}{local}:{rhost}:{rport}{suffix}"
    expected = remote(f"{lhost or '0.0.0.0'}:{lport}", f"{rhost}:{rport}", proto, reverse=reverse)
    return text, expected


def _with_reverse(r: Remote, reverse: bool) -> Remote:
    return Remote(
        r.local_host,
        r.local_port,
        r.local_proto,
        r.remote_host,
        r.remote_port,
        r.remote_proto,
        socks=r.socks,
        reverse=reverse,
        stdio=r.stdio,
    )


@settings(max_examples=300, deadline=None)
@given(remote_texts())
def test_generated_remotes_decode_and_round_trip(case: tuple[str, Remote]) -> None:
    text, expected = case
    got = decode_remote(text)
    assert got == expected
    assert decode_remote(str(got)) == got


GRAMMAR_PIECES = [
    "R:", ":", "[", "]", "::1", "0", "1", "80", "65536", "socks", "stdio", "/udp", "/tcp",
    "/UDP", "host", "a.b", "%eth0", "-", "+", " ", ".",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(GRAMMAR_PIECES)).map("".join)))
def test_decode_remote_returns_or_raises_syntax_error(text: str) -> None:
    try:
        result = decode_remote(text)
    except RemoteSyntaxError:
        return
    assert isinstance(result, Remote)
    assert decode_remote(str(result)) == result
