"""Proxy URLs, the proxy variables of the environment and NO_PROXY matching."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qanat.cli import build_parser
from qanat.connector.options import options_from_args
from qanat.connector.proxies import (
    ProxyEnvironment,
    bypasses,
    choose_proxy,
    parse_proxy_url,
)
from qanat.errors import ConfigError
from qanat.net.proxy import ProxySpec


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "user", "password"),
    [
        ("http://proxy.corp:3128", "http", "proxy.corp", 3128, "", ""),
        ("http://u:p@proxy.corp:3128", "http", "proxy.corp", 3128, "u", "p"),
        ("http://proxy.corp", "http", "proxy.corp", 80, "", ""),
        ("proxy.corp:8080", "http", "proxy.corp", 8080, "", ""),
        ("socks5://u:p@10.1.2.3:1080", "socks5", "10.1.2.3", 1080, "u", "p"),
        ("socks5h://gw-socks", "socks5", "gw-socks", 1080, "", ""),
        # outsystemscc's help text: socks://user:password@host:port is SOCKS5
        ("socks://user:password@proxy.corp:1080", "socks5", "proxy.corp", 1080, "user", "password"),
        ("Socks://proxy.corp", "socks5", "proxy.corp", 1080, "", ""),
        ("SOCKS5://[::1]:9050", "socks5", "::1", 9050, "", ""),
        (
            "http://d%C3%B6m%5Cuser:p%40ss%3Aw0rd@proxy:3128/",
            "http",
            "proxy",
            3128,
            "döm\\user",
            "p@ss:w0rd",
        ),
    ],
)
def test_parse_proxy_url(
    text: str, scheme: str, host: str, port: int, user: str, password: str
) -> None:
    spec = parse_proxy_url(text)
    assert (spec.scheme, spec.host, spec.port, spec.username, spec.password) == (
        scheme,
        host,
        port,
        user,
        password,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://proxy:3128", "TLS to the proxy itself is not supported"),
        ("socks4://proxy:1080", "unsupported proxy scheme 'socks4' \\(SOCKS4 is not supported"),
        ("socks4a://proxy:1080", "SOCKS4 is not supported; socks:// and socks5:// are SOCKS5"),
        ("sock://proxy:1080", "use http://user:pass@host:port or socks://user:pass@host:port"),
        ("http://:3128", "missing proxy host"),
        ("http://proxy:99999", "not a valid proxy URL"),
        ("http://[proxy:3128", "not a valid proxy URL"),
        ("http://proxy:3128/path", "has no path"),
    ],
)
def test_bad_proxy_urls(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_proxy_url(text)


def test_errors_and_display_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_proxy_url("ftp://alice:hunter2@proxy:21")
    assert "hunter2" not in str(info.value)
    assert "alice" in str(info.value)
    spec = parse_proxy_url("http://alice:hunter2@proxy:3128")
    assert str(spec) == "http://alice@proxy:3128"
    assert "hunter2" not in repr(spec)


def test_environment_precedence() -> None:
    env = ProxyEnvironment.from_environ(
        {
            "https_proxy": "http://lower-https:1",
            "HTTPS_PROXY": "http://upper-https:2",
            "HTTP_PROXY": "http://plain:3",
            "ALL_PROXY": "socks5://all:4",
        }
    )
    assert env.https is not None
    assert (env.https.host, env.https.source) == ("upper-https", "HTTPS_PROXY")
    assert env.http is not None
    assert env.http.host == "plain"
    only_http = ProxyEnvironment.from_environ({"http_proxy": "corp:8080"})
    assert only_http.https is not None
    assert only_http.https.host == "corp"  # HTTP_PROXY serves https addresses too
    only_all = ProxyEnvironment.from_environ({"all_proxy": "socks5://s:1080"})
    assert only_all.https is not None
    assert only_all.https.scheme == "socks5"
    assert ProxyEnvironment.from_environ({"HTTPS_PROXY": "  "}).https is None


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="HTTPS_PROXY"):
        ProxyEnvironment.from_environ({"HTTPS_PROXY": "gopher://x"})


def test_explicit_proxy_wins_and_ignores_no_proxy() -> None:
    explicit = ProxySpec("http", "p", 3128)
    env = ProxyEnvironment(https=ProxySpec("http", "env", 1), no_proxy="*")
    assert choose_proxy("https", "gw.example.com", 443, explicit, env) is explicit
    assert choose_proxy("https", "127.0.0.1", 443, explicit, env) is explicit
    assert choose_proxy("https", "gw.example.com", 443, None, env) is None


def test_scheme_picks_the_variable() -> None:
    secure, plain = ProxySpec("http", "s", 1), ProxySpec("http", "p", 2)
    env = ProxyEnvironment(https=secure, http=plain)
    assert choose_proxy("wss", "gw.example.com", 443, None, env) is secure
    assert choose_proxy("https", "gw.example.com", 443, None, env) is secure
    assert choose_proxy("ws", "gw.example.com", 80, None, env) is plain
    assert choose_proxy("http", "gw.example.com", 80, None, ProxyEnvironment(https=secure)) is None


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("gw.example.com", 443, "", False),
        ("gw.example.com", 443, "*", True),
        ("gw.example.com", 443, "example.com", True),
        ("example.com", 443, "example.com", True),
        ("notexample.com", 443, "example.com", False),
        ("gw.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", False),  # Go: leading dot = subdomains only
        ("gw.example.com", 443, "*.example.com", True),
        ("gw.example.com", 443, "other.org, example.com", True),
        ("gw.example.com", 443, "other.org example.com", True),
        ("GW.Example.COM.", 443, "example.com", True),
        ("gw.example.com", 443, "example.com:8443", False),
        ("gw.example.com", 8443, "example.com:8443", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("10.1.2.4", 443, "10.1.2.3", False),
        ("gw.example.com", 443, "10.0.0.0/8", False),
        ("2001:db8::1", 443, "2001:db8::/32", True),
        ("2001:db8::1", 443, "[2001:db8::1]:443", True),
        ("localhost", 443, "", True),  # Go never proxies loopback from the environment
        ("127.0.0.1", 443, "", True),
        ("::1", 443, "", True),
        ("gw.example.com", 443, "10.0.0.0/99", False),
    ],
)
def test_no_proxy(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses(host, port, no_proxy) is bypassed


@given(st.text(max_size=40), st.integers(1, 65535), st.text(max_size=80))
def test_no_proxy_never_raises(host: str, port: int, no_proxy: str) -> None:
    assert bypasses(host, port, no_proxy) in (True, False)


@given(st.text(max_size=80))
def test_parse_proxy_url_parses_or_says_why(text: str) -> None:
    try:
        spec = parse_proxy_url(text)
    except ConfigError:
        return
    assert spec.scheme in ("http", "socks5")
    assert 0 < spec.port <= 65535


def _connect_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["connect", *flags, "https://gw.example.com/sg_x", "R:9000:h:80"]
    )


def test_options_read_proxy_flag_and_environment() -> None:
    options = options_from_args(
        _connect_args("--proxy", "socks5://u:p@s:1080"),
        environ={"HTTPS_PROXY": "http://env:3128", "NO_PROXY": ".corp"},
    )
    assert options.proxy == ProxySpec("socks5", "s", 1080, "u", "p")
    assert options.proxy_env.https is not None
    assert options.proxy_env.https.host == "env"
    assert options.proxy_env.no_proxy == ".corp"
    plain = options_from_args(_connect_args(), environ={})
    assert plain.proxy is None
    assert plain.proxy_env == ProxyEnvironment()
    assert (plain.udp_idle_timeout_s, plain.udp_max_flows) == (60.0, 100)


def test_options_refuse_bad_proxy_and_udp_limits() -> None:
    with pytest.raises(ConfigError, match="--proxy"):
        options_from_args(_connect_args("--proxy", "ftp://x"), environ={})
    with pytest.raises(ConfigError, match="--udp-idle-timeout"):
        options_from_args(_connect_args("--udp-idle-timeout", "0s"), environ={})
    with pytest.raises(ConfigError, match="--udp-max-flows"):
        options_from_args(_connect_args("--udp-max-flows", "0"), environ={})
