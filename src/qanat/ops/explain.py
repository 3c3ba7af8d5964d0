"""What a failure most likely means and what to do: the knowledge of the checks.

Pure functions from an observation (an exception, a status and body, a
refusal text) to a :class:`~qanat.ops.report.StepFailed` with ``detail``
(what was seen, then the likely cause) and ``fix``. Kept apart from the code
that performs the checks so the wording can be read and reviewed in one
place, and tested without sockets.

Token texts are the ones qanat's front door sends (``gateway/frontdoor.py``);
tests pin both ends together.
"""

from __future__ import annotations

import errno
import socket

from qanat import explain as tls_explain
from qanat.ops.httphead import ResponseHead, first_line
from qanat.ops.report import StepFailed

PROXY_HINT = tls_explain.PROXY_HINT


# -- name resolution and TCP --------------------------------------------------------


def resolve_failure(
    host: str, exc: socket.gaierror, *, private_side: bool = False, what: str = "the gateway"
) -> StepFailed:
    temporary = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", -11))
    error = exc.strerror or str(exc)
    if temporary:
        return StepFailed(
            f"cannot resolve {host!r}: {error} (the DNS server did not answer)",
            "check the resolver of this host (/etc/resolv.conf, systemd-resolved) and that it "
            "can reach its DNS server",
        )
    if private_side:
        return StepFailed(
            f"cannot resolve {host!r} from this host: {error}; the connector resolves endpoint "
            "names here, on the private side",
            f"use a name this host's DNS knows (check: getent hosts {host}) or the endpoint's IP "
            "address in the remote",
        )
    if what == "the proxy":
        return StepFailed(
            f"cannot resolve the proxy {host!r}: {error}",
            f"check the host name in --proxy and this host's DNS (getent hosts {host})",
        )
    return StepFailed(
        f"cannot resolve {host!r}: {error}",
        f"check the host name in the address (copy it from the portal); check this host's DNS "
        f"(getent hosts {host}), {PROXY_HINT}",
    )


def connect_failure(where: str, exc: OSError, *, what: str = "the gateway") -> StepFailed:
    if isinstance(exc, ConnectionRefusedError):
        return StepFailed(
            f"{where} refused the connection: nothing listens on that port, or a firewall "
            "rejects it",
            f"check the port in the address (https uses 443) and that {what} is running there",
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return StepFailed(
            f"no route to {where} ({exc.strerror})",
            f"this host has no route there: check its network and default route, {PROXY_HINT}",
        )
    return StepFailed(
        f"cannot connect to {where}: {exc.strerror or exc}",
        f"check that {what} is reachable from this host",
    )


def connect_timeout(where: str, timeout_s: float) -> StepFailed:
    return StepFailed(
        f"no answer from {where} within {timeout_s:g}s: packets are dropped on the way (an "
        "outbound firewall) or the host is down",
        f"allow outbound TCP from this host to {where} (a connector needs only outbound "
        f"HTTPS), {PROXY_HINT}",
    )


# -- TLS ------------------------------------------------------------------------------

# OpenSSL X509_V_ERR_* codes the checks explain.


def tls_failure(host: str, exc: BaseException, tls_ca: str | None, port: int = 443) -> StepFailed:
    """The TLS step failed: the same explanation the connector logs (qanat.explain)."""
    said = tls_explain.tls_failure(exc, host, port, tls_ca)
    return StepFailed(said.detail, said.fix)


# -- HTTP answers ------------------------------------------------------------------------


def _preview(head: ResponseHead) -> str:
    text = first_line(head.body_text)
    return f": {text!r}" if text else ""


def blocked_by_middlebox(head: ResponseHead, host: str, during: str) -> StepFailed:
    server = f" (Server: {head.header('server')})" if head.header("server") else ""
    return StepFailed(
        f"HTTP {head.status_line}{server}{_preview(head)} during {during}: answered by a "
        "proxy or L7 firewall, not by the gateway",
        f"ask the network team to allow https://{host} (WebSocket upgrades included, "
        f"no TLS inspection), {PROXY_HINT}",
    )


def upgrade_not_switched(status: int, body: str, host: str) -> StepFailed:
    """The upgrade got a non-101 answer that is not a token decision."""
    head = ResponseHead(status, "", {}, body.encode())
    if status == 200 or head.looks_like_html:
        return StepFailed(
            f"the WebSocket upgrade was answered HTTP {status} instead of 101 Switching "
            f"Protocols{_preview(head)}: a proxy or L7 firewall on the way removes the Upgrade "
            "header or answers the request itself",
            f"let WebSocket upgrades to {host} through unchanged (for https: exempt it from TLS "
            f"inspection), {PROXY_HINT} that supports CONNECT",
        )
    if status == 400 and "chisel-v3" in body:
        return StepFailed(
            "the gateway did not receive 'Sec-WebSocket-Protocol: chisel-v3': something on the "
            "way strips WebSocket headers",
            f"let WebSocket upgrades to {host} through unchanged, {PROXY_HINT}",
        )
    if status == 404:
        return StepFailed(
            f"HTTP 404 on the upgrade{_preview(head)}: this server does not serve that path",
            "check the address (…/sg_<id> as shown in the portal)",
        )
    if status == 407:
        return StepFailed(
            "HTTP 407: a proxy on the way requires authentication",
            "give the proxy with credentials: --proxy http://user:pass@proxy:port",
        )
    if status >= 500:
        return StepFailed(
            f"HTTP {status}{_preview(head)}: the gateway, or a load balancer in front of it, "
            "failed",
            "check that the gateway runs behind its load balancer; retry later",
        )
    return StepFailed(
        f"the upgrade was refused with HTTP {status}{_preview(head)}",
        "check the address and what listens there",
    )


# -- token ---------------------------------------------------------------------------


def token_verdict(status: int, body: str) -> str | None:
    """Which token answer this is, or None when it is not one of the gateway's."""
    text = body.lower()
    if status == 429:
        return "rate_limited"
    if status not in (401, 403):
        return None
    if "renewed" in text:
        return "renewed"
    if "inactive" in text:
        return "inactive"
    if "token missing" in text:
        return "missing"
    if "token rejected" in text:
        return "rejected"
    if ResponseHead(status, "", {}, body.encode()).looks_like_html:
        return None  # a block page, not the gateway
    return "rejected"


def token_failure(verdict: str, status: int, body: str) -> StepFailed:
    said = f" (HTTP {status}: {first_line(body)!r})" if body else f" (HTTP {status})"
    if verdict == "renewed":
        return StepFailed(
            "token rejected: it was renewed in the portal" + said + "; tunnels set up with it "
            "keep running until they drop, new connections are refused",
            "use the new token shown when it was renewed (if it was lost, renew it again)",
        )
    if verdict == "inactive":
        return StepFailed(
            "the token is valid but the stage's private gateway is inactive" + said,
            "activate the private gateway in the portal; running connectors reconnect by "
            "themselves",
        )
    if verdict == "missing":
        return StepFailed(
            "no token was sent" + said, 'add --header "token: <token>" with the stage\'s token'
        )
    if verdict == "rate_limited":
        return StepFailed(
            "too many failed token attempts from this address; the gateway refuses tries for a "
            "while" + said,
            "fix the token first, then wait a minute before the next try",
        )
    return StepFailed(
        "the gateway does not accept this token for this address" + said,
        "copy the token again (shown once in the portal; renew it if lost), pass it as --header "
        '"token: <token>", and check that address and token belong to the same stage',
    )


# -- config (remotes) --------------------------------------------------------------------


def config_refused(text: str) -> StepFailed:
    low = text.lower()
    if "outside this stage's range" in low:
        fix = "declare a gateway port inside the stage's port range (R:<port>:<host>:<port>)"
    elif "already served with target" in low:
        fix = (
            "another connector of this stage serves that port with a different target: use the "
            "same target (to join its pool) or another port"
        )
    elif "reserved by another stage" in low:
        fix = "choose another gateway port; this one belongs to another stage"
    elif "port in use" in low or "address already in use" in low:
        fix = "the port is taken on the gateway host by another program: choose another port"
    elif "only tcp" in low or "/udp" in low:
        fix = "this gateway serves TCP remotes only: remove the /udp remotes"
    elif "forward remote" in low or "socks" in low or "stdio" in low:
        fix = "declare reverse remotes only: R:<gateway-port>:<host>:<port>"
    else:
        fix = "correct the remotes named in the refusal"
    return StepFailed(f"the gateway refused the remotes: {text}", fix)
