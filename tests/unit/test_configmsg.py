"""The ``config`` request payload: byte-exact encoding and defensive decoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.errors import RemoteProtocolError
from qanat.wire.configmsg import (
    MAX_CONFIG_BYTES,
    MAX_REMOTES,
    ConfigMessage,
    decode_config,
    encode_config,
)
from qanat.wire.remotes import decode_remote

# PROTOCOL.md section 4, as outsystemscc sends it (one line on the wire).
OUTSYSTEMSCC_CONFIG = (
    b'{"Version":"0.0.0-src","Remotes":[{"LocalHost":"0.0.0.0","LocalPort":"18082",'
    b'"LocalProto":"tcp","RemoteHost":"127.0.0.1","RemotePort":"18000",'
    b'"RemoteProto":"tcp","Socks":false,"Reverse":true,"Stdio":false}]}'
)


def test_encode_matches_outsystemscc_bytes() -> None:
    remote = decode_remote("R:18082:127.0.0.1:18000")
    assert encode_config("0.0.0-src", [remote]) == OUTSYSTEMSCC_CONFIG


def test_decode_outsystemscc_bytes() -> None:
    message = decode_config(OUTSYSTEMSCC_CONFIG)
    assert message == ConfigMessage("0.0.0-src", (decode_remote("R:18082:127.0.0.1:18000"),))


@pytest.mark.parametrize(
    "texts",
    [
        [],
        ["R:18082:127.0.0.1:18000"],
        ["R:8053:10.0.0.2:53/udp", "R:8080:[::1]:80", "socks", "stdio:example.com:22"],
    ],
)
def test_round_trip(texts: list[str]) -> None:
    remotes = tuple(decode_remote(t) for t in texts)
    assert decode_config(encode_config("1.11.5", remotes)) == ConfigMessage("1.11.5", remotes)


def test_missing_fields_take_chisel_defaults() -> None:
    message = decode_config(b'{"Remotes":[{"LocalPort":"8080","RemotePort":"80"}]}')
    assert message.version == ""
    (remote,) = message.remotes
    assert (remote.local_proto, remote.remote_proto) == ("tcp", "tcp")
    assert (remote.socks, remote.reverse, remote.stdio) == (False, False, False)


def test_remote_limit_is_exact() -> None:
    at_limit = b'{"Remotes":[' + b",".join([b"{}"] * MAX_REMOTES) + b"]}"
    assert len(decode_config(at_limit).remotes) == MAX_REMOTES


BAD_PAYLOADS = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe\xfa", "not valid JSON"),
    (b'{"Remotes":[]} trailing', "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (b'"config"', "expected a JSON object"),
    (b"null", "expected a JSON object"),
    (b"{}", "Remotes is not a list"),
    (b'{"Remotes":{}}', "Remotes is not a list"),
    (b'{"Remotes":null}', "Remotes is not a list"),
    (b'{"Version":1,"Remotes":[]}', "Version is not a short string"),
    (b'{"Version":"' + b"v" * 129 + b'","Remotes":[]}', "Version is not a short string"),
    (b'{"Remotes":[1]}', "remote #0 is not an object"),
    (b'{"Remotes":[{},[]]}', "remote #1 is not an object"),
    (b'{"Remotes":[{"LocalPort":18082}]}', "field LocalPort is not a short string"),
    (b'{"Remotes":[{"RemoteHost":null}]}', "field RemoteHost is not a short string"),
    (b'{"Remotes":[{"RemoteHost":"' + b"h" * 513 + b'"}]}', "field RemoteHost"),
    (b'{"Remotes":[{"Reverse":"true"}]}', "field Reverse is not a boolean"),
    (b'{"Remotes":[{"Socks":1}]}', "field Socks is not a boolean"),
    (b'{"Remotes":[{"Stdio":null}]}', "field Stdio is not a boolean"),
    (b'{"Remotes":[' + b",".join([b"{}"] * 10_000) + b"]}", "10000 remotes exceeds the limit"),
    (b'{"Remotes":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"[" * 500_000, "nested too deeply"),
    (b'{"Version":' + b"9" * 5000 + b"}", "not valid JSON"),
]


@pytest.mark.parametrize(
    ("payload", "fragment"), BAD_PAYLOADS, ids=[f"{i}-{f[1]}" for i, f in enumerate(BAD_PAYLOADS)]
)
def test_bad_payloads_raise_remote_protocol_error(payload: bytes, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError, match=r"^config: ") as info:
        decode_config(payload)
    assert fragment in str(info.value)


def test_too_large_is_refused_before_parsing() -> None:
    payload = b" " * MAX_CONFIG_BYTES + b"{}"
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 1048576"):
        decode_config(payload)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 10"):
        decode_config(OUTSYSTEMSCC_CONFIG, max_bytes=10)


def test_custom_remote_limit() -> None:
    with pytest.raises(RemoteProtocolError, match="2 remotes exceeds the limit of 1"):
        decode_config(b'{"Remotes":[{},{}]}', max_remotes=1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(payload: bytes) -> None:
    try:
        message = decode_config(payload)
    except RemoteProtocolError:
        return
    assert isinstance(message, ConfigMessage)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_values = json_scalars | st.lists(json_scalars, max_size=3)
field_names = st.sampled_from(
    ["Version", "Remotes", "LocalHost", "LocalPort", "Socks", "Reverse", "Stdio", "x"]
)
config_like = st.dictionaries(
    field_names,
    json_values | st.lists(st.dictionaries(field_names, json_values, max_size=4), max_size=3),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(config_like)
def test_config_shaped_json_decodes_or_raises_protocol_error(doc: object) -> None:
    payload = json.dumps(doc).encode()
    try:
        message = decode_config(payload)
    except RemoteProtocolError:
        return
    assert isinstance(message, ConfigMessage)
