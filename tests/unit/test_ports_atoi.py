"""Ports as chisel's Go peers read them: strconv.Atoi, then 1-65535.

Python's int() accepts what Go refuses (spaces, line breaks, ``_``, digits
of other scripts), so a port from the wire goes through
:func:`qanat.wire.remotes.port_problem`; checked here against a model of
Go's Atoi written from its documentation, and through ``decode_config``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from qanat.errors import RemoteProtocolError
from qanat.wire.configmsg import decode_config
from qanat.wire.remotes import canonical_port, port_problem

#: "8081" and "80" in fullwidth digits (U+FF10..U+FF19), which int() reads.
FULLWIDTH_8081 = "\uff18\uff10\uff18\uff11"
FULLWIDTH_80 = "\uff18\uff10"


def go_atoi(text: str) -> int | None:
    """Go's strconv.Atoi (base 10): optional sign, then at least one of 0-9; None on error."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or any(c not in "0123456789" for c in body):
        return None
    value = int(body)
    if value > 2**63 - (0 if text.startswith("-") else 1):
        return None  # ErrRange
    return -value if text.startswith("-") else value


def go_port(text: str) -> int | None:
    value = go_atoi(text)
    return value if value is not None and 1 <= value <= 65535 else None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (" 8081\n", "has spaces or line breaks"),
        ("8081\n", "has spaces or line breaks"),
        ("\t8081", "has spaces or line breaks"),
        ("8081 ", "has spaces or line breaks"),
        ("\u20008081", "has spaces or line breaks"),  # en quad, a Unicode space
        (FULLWIDTH_8081, "has non-ASCII digits"),  # fullwidth
        ("٨٠٨١", "has non-ASCII digits"),  # Arabic-Indic
        ("8_081", "has an underscore"),
        ("0x1f91", "is not a decimal number"),
        ("8081.0", "is not a decimal number"),
        ("+", "is not a decimal number"),
        ("", "is empty"),
        ("0", "is outside 1-65535"),
        ("-8081", "is outside 1-65535"),
        ("65536", "is outside 1-65535"),
        ("99999999999999999999999", "is outside 1-65535"),
    ],
)
def test_ports_go_refuses_are_refused_with_the_reason(text: str, reason: str) -> None:
    assert go_port(text) is None
    problem = port_problem(text)
    assert problem is not None
    assert problem.startswith(reason)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("8081", "8081"),
        ("+8081", "8081"),
        ("08081", "8081"),
        ("0" * 40 + "1", "1"),
        ("65535", "65535"),
    ],
)
def test_ports_go_accepts_are_accepted_and_made_canonical(text: str, canonical: str) -> None:
    assert go_port(text) is not None
    assert port_problem(text) is None
    assert canonical_port(text) == canonical


@given(st.text(max_size=12))
@example(" 8081\n")
@example(FULLWIDTH_8081)
@example("8_081")
@example("+8081")
def test_port_problem_agrees_with_go_atoi(text: str) -> None:
    expected = go_port(text)
    problem = port_problem(text)
    assert (problem is None) == (expected is not None), (text, problem)
    if expected is not None:
        assert int(canonical_port(text)) == expected


@given(st.from_regex(r"\A[+-]?[0-9\uff10-\uff19_ \n]{0,8}\Z"))
def test_port_problem_agrees_with_go_atoi_on_near_numbers(text: str) -> None:
    assert (port_problem(text) is None) == (go_port(text) is not None), text


def config_with(local_port: str, remote_port: str = "80") -> bytes:
    remote = {"LocalPort": local_port, "RemoteHost": "10.0.0.5", "RemotePort": remote_port}
    return json.dumps({"Version": "x", "Remotes": [{**remote, "Reverse": True}]}).encode()


@pytest.mark.parametrize("port", [" 8081\n", FULLWIDTH_8081, "8_081", "8081 "])
def test_config_refuses_local_ports_go_refuses(port: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_config(config_with(port))
    assert str(info.value).startswith(f"config: remote #0 LocalPort {port!r} ")


@pytest.mark.parametrize("port", [" 80", FULLWIDTH_80, "8_0"])
def test_config_refuses_remote_ports_go_refuses(port: str) -> None:
    with pytest.raises(RemoteProtocolError, match=r"^config: remote #0 RemotePort "):
        decode_config(config_with("8081", port))


def test_config_ports_come_out_canonical() -> None:
    (remote,) = decode_config(config_with("+08081", "0080")).remotes
    assert (remote.local_port, remote.remote_port) == ("8081", "80")


@given(st.text(max_size=10), st.text(max_size=10))
def test_config_with_any_ports_decodes_or_raises_protocol_error(local: str, remote: str) -> None:
    try:
        message = decode_config(config_with(local, remote))
    except RemoteProtocolError:
        assert go_port(local) is None or (remote != "" and go_port(remote) is None)
        return
    (decoded,) = message.remotes
    assert decoded.local_port == "" or port_problem(decoded.local_port) is None
    assert local == "" or int(decoded.local_port) == go_port(local)
