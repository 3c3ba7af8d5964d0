"""Gateway settings: parsed once at the edge, frozen, every limit named with its unit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qanat.net.ssh import DEFAULT_WINDOW_BYTES
from qanat.net.websocket import DEFAULT_MAX_FRAME_BYTES
from qanat.wire.configmsg import MAX_REMOTES
from qanat.wire.gob import MAX_PAYLOAD_BYTES

#: Loopback and private ranges: where a Prometheus server usually scrapes from.
PRIVATE_CIDRS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the gateway's data plane can be tuned with.

    Attributes:
        listen_host / listen_port: where connectors (and the portal) are served.
        data_dir: holds the persisted host key.
        keepalive_s: interval between the gateway's pings to each connector
            (0 disables them).
        keepalive_timeout_s: how long one ping may take before it counts as missed.
        keepalive_misses: missed pings in a row that close a tunnel.
        request_head_timeout_s / max_request_head_bytes: bounds on the HTTP
            request a client must send first.
        setup_timeout_s: from the upgrade to a successful ``config``.
        channel_open_timeout_s: how long an app connection waits for one
            connector to open its channel before trying the next.
        max_frame_bytes: largest WebSocket frame accepted.
        max_remotes: most remotes one connector may declare.
        ssh_window_bytes: per-channel SSH receive window.
        redirect_url: when set, a plain GET of an address answers 302 to it
            (outsystemscc then tunnels there).
        tls_cert_path / tls_key_path: certificate chain and key served to
            connectors (HTTPS); None serves plain HTTP. Reloaded on SIGHUP.
        tls_client_ca_path: when set, connectors must present a client
            certificate issued by one of these authorities (mutual TLS).
        udp_idle_timeout_s: a UDP flow (one app source) without traffic for
            this long is forgotten.
        udp_max_flows: most UDP flows per UDP endpoint (chisel: 100).
        udp_max_payload_bytes: largest datagram carried (chisel: 9012).
        udp_max_pending: datagrams held per UDP channel while it opens.
        udp_reopen_delay_s: after a connector refused a UDP channel, how
            long before it is asked again.
        metrics_allow_cidrs: sources allowed to read ``/metrics`` on the
            listener (it names stages and ports); health paths are open.
    """

    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    keepalive_s: float = 25.0
    keepalive_timeout_s: float = 5.0
    keepalive_misses: int = 3
    request_head_timeout_s: float = 10.0
    max_request_head_bytes: int = 16 * 1024
    setup_timeout_s: float = 30.0
    channel_open_timeout_s: float = 5.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_remotes: int = MAX_REMOTES
    ssh_window_bytes: int = DEFAULT_WINDOW_BYTES
    redirect_url: str | None = None
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_client_ca_path: Path | None = None
    udp_idle_timeout_s: float = 60.0
    udp_max_flows: int = 100
    udp_max_payload_bytes: int = MAX_PAYLOAD_BYTES
    udp_max_pending: int = 64
    udp_reopen_delay_s: float = 1.0
    metrics_allow_cidrs: tuple[str, ...] = PRIVATE_CIDRS

    @property
    def host_key_path(self) -> Path:
        return self.data_dir / "host_key"
