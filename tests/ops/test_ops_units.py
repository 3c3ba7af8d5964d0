"""Pure parts of the operations code: explanations, the HTTP head parser, output, limits."""

from __future__ import annotations

import io
import json
import ssl
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qanat.connector.refusals import LoggedDialer
from qanat.connector.session import Stats
from qanat.errors import ChannelOpenFailed
from qanat.gateway.allowlist import Allowlist
from qanat.ops import explain
from qanat.ops.commands import _unescape
from qanat.ops.httphead import NotHttp, first_line, parse_response_head, split_head
from qanat.ops.report import HumanPrinter, Report, StepResult

# -- explanations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (
            401,
            "token rejected: this token was renewed; use the new token from the portal",
            "renewed",
        ),
        (403, "private gateway of this stage is inactive; activate it in the portal", "inactive"),
        (401, 'token missing: send it as --header "token: <token>"', "missing"),
        (401, "token rejected: check the token header", "rejected"),
        (429, "too many failed token attempts; retry later", "rate_limited"),
        (401, "Unauthorized", "rejected"),
        (403, "<html><title>Access denied by policy</title></html>", None),
        (200, "<html></html>", None),
        (502, "Bad Gateway", None),
    ],
)
def test_token_verdicts(status: int, body: str, verdict: str | None) -> None:
    assert explain.token_verdict(status, body) == verdict


def test_every_token_verdict_has_a_fix() -> None:
    for verdict in ("renewed", "inactive", "missing", "rejected", "rate_limited"):
        failed = explain.token_failure(verdict, 401, "x")
        assert failed.detail
        assert failed.fix


@pytest.mark.parametrize(
    ("text", "fix_word"),
    [
        ("remote R:30001=>h:1: port 30001 is outside this stage's range 20000-20010", "range"),
        ("Server cannot listen on R:1=>h:1: port 1 is already served with target x", "pool"),
        ("port 8081 is reserved by another stage on 127.0.0.1; choose another port", "another"),
        ("Server cannot listen on R:80=>h:1: Address already in use (port in use)", "taken"),
        ("remote R:53=>h:53/udp: only TCP remotes are served by this gateway", "TCP"),
        ("something new", "correct"),
    ],
)
def test_config_refusals(text: str, fix_word: str) -> None:
    failed = explain.config_refused(text)
    assert text in failed.detail
    assert fix_word in failed.fix


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (10, "expired"),
        (9, "not valid yet"),
        (62, "not valid for"),
        (20, "trusted"),
        (99, "rejected"),
    ],
)
def test_tls_verification_codes(code: int, expected: str) -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = "message from OpenSSL"
    failed = explain.tls_failure("gw.example.com", exc, None)
    assert expected in failed.detail
    assert failed.fix


def test_plain_http_on_a_tls_port() -> None:
    exc = ssl.SSLError(1, "wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"
    assert "plain HTTP" in explain.tls_failure("h", exc, None).detail
    assert "SNI" in explain.tls_failure("h", ConnectionResetError(), None).detail


def test_upgrade_answers() -> None:
    assert "instead of 101" in explain.upgrade_not_switched(200, "ok", "h").detail
    html = "<html><title>Blocked</title></html>"
    assert "Blocked" in explain.upgrade_not_switched(403, html, "h").detail
    stripped = explain.upgrade_not_switched(400, "Sec-WebSocket-Protocol must offer chisel-v3", "h")
    assert "strips WebSocket headers" in stripped.detail
    assert "load balancer" in explain.upgrade_not_switched(503, "", "h").detail
    assert "--proxy http://user:pass" in explain.upgrade_not_switched(407, "", "h").fix


# -- the HTTP head parser --------------------------------------------------------------


def test_parse_response_head() -> None:
    raw = b"HTTP/1.1 302 Found\r\nLocation: https://b/sg_x\r\nServer: qanat\r\nX: a:b\r\n\r\nbody"
    split = split_head(raw)
    assert split is not None
    head = parse_response_head(*split)
    assert head.status == 302
    assert head.status_line == "302 Found"
    assert head.header("LOCATION") == "https://b/sg_x"
    assert head.header("x") == "a:b"
    assert head.body == b"body"
    assert parse_response_head(b"HTTP/1.0 200").reason == ""
    with pytest.raises(NotHttp):
        parse_response_head(b"SSH-2.0-OpenSSH_9.6")


@given(st.binary(max_size=300))
def test_parser_parses_or_raises_not_http(data: bytes) -> None:
    try:
        head = parse_response_head(data)
    except NotHttp:
        return
    assert 100 <= head.status <= 999


def test_first_line() -> None:
    assert first_line("<html><head><title> Web Gateway </title>") == "Web Gateway"
    assert first_line("\n\n  220 ready\r\nmore") == "220 ready"
    assert first_line("x" * 500, limit=10) == "x" * 9 + "…"


# -- output --------------------------------------------------------------------------


def sample_report() -> Report:
    report = Report("diagnose", "http://gw/sg_x")
    report.add(StepResult("dns", True, 1.25, "gw -> 10.0.0.1"))
    report.add(StepResult("tcp", False, 3000.0, "no answer", "allow outbound TCP"))
    report.not_run = ["address"]
    return report


def test_report_json_is_stable() -> None:
    doc = json.loads(json.dumps(sample_report().to_json()))
    assert doc == {
        "command": "diagnose",
        "target": "http://gw/sg_x",
        "ok": False,
        "steps": [
            {"name": "dns", "ok": True, "ms": 1.25, "detail": "gw -> 10.0.0.1", "fix": ""},
            {"name": "tcp", "ok": False, "ms": 3000.0, "detail": "no answer",
             "fix": "allow outbound TCP"},
        ],
        "not_run": ["address"],
    }  # fmt: skip
    assert not Report("probe", "x").ok, "no step run is not a pass"


@pytest.mark.parametrize("colour", [True, False])
def test_human_output(colour: bool) -> None:
    out = io.StringIO()
    printer = HumanPrinter(out, colour)
    report = sample_report()
    for step in report.steps:
        printer.step(step)
    printer.summary(report)
    text = out.getvalue()
    assert ("\033[31mFAIL" in text) is colour
    plain = text.replace("\033[0m", "")
    for code in ("\033[31m", "\033[32m", "\033[2m", "\033[1m"):
        plain = plain.replace(code, "")
    assert "PASS  dns" in plain
    assert "fix: allow outbound TCP" in plain
    assert "not run (an earlier step failed): address" in plain
    assert "1 of 2 steps failed: tcp" in plain


# -- small helpers -------------------------------------------------------------------------


def test_unescape() -> None:
    assert _unescape("EHLO x\\r\\n") == b"EHLO x\r\n"
    assert _unescape("a\\\\nb\\t") == b"a\\nb\t"
    assert _unescape("é") == "é".encode()


def test_metrics_source_allowlist() -> None:
    allowed = Allowlist.parse(["127.0.0.0/8", "10.0.0.0/8"]).allows
    assert allowed("127.0.0.1")
    assert allowed("::ffff:10.1.2.3")
    assert not allowed("203.0.113.9")
    assert not allowed("not an ip")
    assert not Allowlist.parse([]).allows("127.0.0.1")


async def test_refused_channels_are_counted_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def dial(target: str) -> Any:
        raise ChannelOpenFailed("x", reason=f"dial {target}: connection refused")

    stats = Stats()
    import logging

    dialer = LoggedDialer(dial, logging.getLogger("qanat.connector.test"), stats, quiet_s=60)
    with caplog.at_level(logging.WARNING, logger="qanat.connector.test"):
        for _ in range(100):
            with pytest.raises(ChannelOpenFailed):
                await dialer("10.0.0.5:8393")
        with pytest.raises(ChannelOpenFailed):
            await dialer("10.0.0.6:25")
    assert stats.channels_refused == 101
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused a channel to 10.0.0.5:8393: dial 10.0.0.5:8393: connection refused",
        "refused a channel to 10.0.0.6:25: dial 10.0.0.6:25: connection refused",
    ]
