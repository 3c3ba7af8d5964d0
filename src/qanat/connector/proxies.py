"""Which proxy the connector uses: ``--proxy``, else the environment. Pure code.

``--proxy`` wins whenever it is given and applies to every connection the
connector makes to the gateway (the address GET and the tunnel), like
chisel's ``--proxy``. Without it, the usual variables are read once at start:

- ``https://`` / ``wss://`` addresses: ``HTTPS_PROXY``, ``https_proxy``,
  then ``HTTP_PROXY``, ``http_proxy``, then ``ALL_PROXY``, ``all_proxy``;
- ``http://`` / ``ws://`` addresses: ``HTTP_PROXY``, ``http_proxy``, then
  ``ALL_PROXY``, ``all_proxy``;
- ``NO_PROXY`` / ``no_proxy`` lists hosts reached directly, with Go's rules
  (outsystemscc is a Go program): ``*`` for everything; ``example.com`` for
  that name and its subdomains; ``.example.com`` for subdomains only; an IP
  address or a CIDR range; any entry may end in ``:port``. As in Go,
  ``localhost`` and loopback addresses never go through an environment proxy.

Proxy URLs: ``http://[user:pass@]host[:port]`` (HTTP CONNECT; a URL
without a scheme is HTTP) and ``socks://``, ``socks5://`` or ``socks5h://``
(all SOCKS5, as chisel's client treats them; ``socks://user:pass@host:port``
is the form the outsystemscc help text shows; the gateway's name is always
resolved by the proxy). SOCKS4 is refused by name. Without a port, Go's
defaults apply: 80 for http, 1080 for SOCKS. Credentials may be
percent-encoded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from qanat.errors import ConfigError
from qanat.net.proxy import ProxySpec

_DEFAULT_PORTS = {"http": 80, "socks5": 1080}
_SCHEMES = {"http": "http", "socks": "socks5", "socks5": "socks5", "socks5h": "socks5"}
_HTTPS_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_HTTP_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def parse_proxy_url(text: str, source: str = "--proxy") -> ProxySpec:
    """Parse one proxy URL.

    Raises:
        ConfigError: naming ``source``, with the accepted forms.
    """
    raw = text.strip()
    shown = _without_password(raw)
    if "://" not in raw:
        raw = f"http://{raw}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{source} {shown!r}: not a valid proxy URL ({exc})") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        hint = {
            "https": " (TLS to the proxy itself is not supported; use http://)",
            "socks4": " (SOCKS4 is not supported; socks:// and socks5:// are SOCKS5)",
            "socks4a": " (SOCKS4 is not supported; socks:// and socks5:// are SOCKS5)",
        }.get(parts.scheme.lower(), "")
        raise ConfigError(
            f"{source} {shown!r}: unsupported proxy scheme {parts.scheme!r}{hint}; "
            "use http://user:pass@host:port or socks://user:pass@host:port (SOCKS5)"
        )
    if not parts.hostname:
        raise ConfigError(f"{source} {shown!r}: missing proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{source} {shown!r}: a proxy URL has no path (scheme://host:port)")
    return ProxySpec(
        scheme=scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[scheme],
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        source=source,
    )


def _without_password(text: str) -> str:
    head, sep, tail = text.rpartition("@")
    if not sep:
        return text
    scheme, dslash, userinfo = head.rpartition("//")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{dslash}{user}:***@{tail}"


@dataclass(frozen=True, slots=True)
class ProxyEnvironment:
    """The proxy variables of the environment, parsed once at start.

    Attributes:
        https: proxy for https/wss addresses, or None.
        http: proxy for http/ws addresses, or None.
        no_proxy: the raw ``NO_PROXY`` list.
    """

    https: ProxySpec | None = None
    http: ProxySpec | None = None
    no_proxy: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxyEnvironment:
        """Read the variables.

        Raises:
            ConfigError: a variable holds something that is not a proxy URL.
        """
        return cls(
            https=_first(environ, _HTTPS_VARS),
            http=_first(environ, _HTTP_VARS),
            no_proxy=environ.get("NO_PROXY", environ.get("no_proxy", "")),
        )


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> ProxySpec | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return parse_proxy_url(value, source=name)
    return None


def choose_proxy(
    scheme: str,
    host: str,
    port: int,
    explicit: ProxySpec | None,
    environment: ProxyEnvironment,
) -> ProxySpec | None:
    """The proxy for a connection to ``host:port`` (``scheme`` of the address)."""
    if explicit is not None:
        return explicit
    secure = scheme in ("https", "wss")
    spec = environment.https if secure else environment.http
    if spec is None or bypasses(host, port, environment.no_proxy):
        return None
    return spec


def bypasses(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``host:port`` is reached directly under ``no_proxy`` (Go's rules)."""
    host = host.lower().strip("[]").rstrip(".")
    if host == "localhost":
        return True
    ip = _ip(host)
    if ip is not None and ip.is_loopback:
        return True
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if _entry_matches(entry, host, ip, port):
            return True
    return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _entry_matches(
    entry: str,
    host: str,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    port: int,
) -> bool:
    if "/" in entry:
        if ip is None:
            return False
        try:
            return ip in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    name, want_port = entry, 0
    if entry.startswith("["):  # [v6]:port or [v6]
        inner, _, rest = entry[1:].partition("]")
        name = inner
        if rest.startswith(":") and rest[1:].isdigit():
            want_port = int(rest[1:])
    elif entry.count(":") == 1:
        head, _, tail = entry.partition(":")
        if tail.isdigit():
            name, want_port = head, int(tail)
    if want_port and want_port != port:
        return False
    entry_ip = _ip(name)
    if entry_ip is not None or ip is not None:
        return entry_ip is not None and ip is not None and entry_ip == ip
    name = name.rstrip(".")
    if name.startswith("*."):
        name = name[1:]
    if name.startswith("."):
        return host.endswith(name)
    return host == name or host.endswith("." + name)
