"""Gateway settings: parsed once at the edge, frozen, every limit named with its unit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qanat.errors import ConfigError
from qanat.gateway.hedge import HedgePolicy
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

Balance = Literal["round_robin", "least_connections"]
BALANCE_CHOICES: tuple[Balance, ...] = ("round_robin", "least_connections")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the gateway's data plane can be tuned with.

    Attributes:
        listen_host / listen_port: where connectors (and the portal) are served.
        data_dir: holds the persisted host key.
        keepalive_s: interval between the gateway's pings to each connector
            (0 disables them). A frozen connector is detected within
            ``keepalive_misses * keepalive_s + keepalive_timeout_s``.
        keepalive_timeout_s: how long one ping may take before it counts as
            missed; capped at ``keepalive_s`` so pings keep their rhythm.
        keepalive_misses: missed pings in a row that close a tunnel.
        request_head_timeout_s / max_request_head_bytes: bounds on the HTTP
            request a client must send first.
        setup_timeout_s: from the upgrade to a successful ``config``.
        channel_open_timeout_s: how long an app connection waits for one
            connector to open its channel before trying the next.
        channel_stall_s: a tunnel with a channel open pending for longer than
            this gets new app connections only when no other tunnel can
            (the threshold adapts: ten times the tunnel's usual open time,
            at least 0.1 s, at most this).
        balance: how new app connections are spread over a port's healthy
            tunnels: ``round_robin`` or ``least_connections`` (fewest open).
        allow_target_mismatch: let a connector join a port that another
            connector serves with a different target (refused by default).
        failure_threshold: channel opens failing in a row (refused or timed
            out) that take a tunnel out of a port's rotation ...
        cooldown_s: ... for this long; then one app connection probes it.
        stale_check_s: when a connector comes back with the same identity, its
            old session gets this long to answer a ping before it is replaced.
        flap_connects / flap_window_s: more tunnels than this from one
            connector identity within the window is flapping ...
        flap_backoff_s / flap_backoff_max_s: ... answered with 429 and
            Retry-After for this long, doubling on each repeat up to the max.
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
        trusted_proxy_cidrs: reverse proxies whose ``X-Forwarded-For`` names
            the client (token limiter, logs, ``/metrics`` check); from any
            other peer the header is ignored.
        max_unproven_per_source / max_unproven: connections not yet a tunnel
            (reading their head, portal, operations) per source address and in
            all (0: a quarter of RLIMIT_NOFILE); more are closed at once.
        idle_timeout_s: a portal connection with nothing received for this
            long is closed.
        hedge: when a second connector is asked for a channel the first has
            not opened yet (see qanat.gateway.hedge); ``max_s`` is the most a
            frozen connector costs one app connection while another serves.

    Raises:
        ConfigError: (on construction) a value is out of range; the message
            names the command-line flag.
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
    channel_stall_s: float = 1.0
    balance: Balance = "round_robin"
    allow_target_mismatch: bool = False
    failure_threshold: int = 3
    cooldown_s: float = 5.0
    stale_check_s: float = 2.0
    flap_connects: int = 10
    flap_window_s: float = 60.0
    flap_backoff_s: float = 10.0
    flap_backoff_max_s: float = 300.0
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
    trusted_proxy_cidrs: tuple[str, ...] = ()
    max_unproven_per_source: int = 64
    max_unproven: int = 0
    idle_timeout_s: float = 30.0
    hedge: HedgePolicy = field(default_factory=HedgePolicy)

    def __post_init__(self) -> None:
        positive = {
            "--channel-open-timeout": self.channel_open_timeout_s,
            "--channel-stall": self.channel_stall_s,
            "--cooldown": self.cooldown_s,
            "--flap-window": self.flap_window_s,
            "--flap-backoff": self.flap_backoff_s,
            "--flap-backoff-max": self.flap_backoff_max_s,
            "--udp-idle-timeout": self.udp_idle_timeout_s,
            "--keepalive-timeout": self.keepalive_timeout_s,
        }
        for flag, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{flag} must be more than 0s (got {value:g}s)")
        counts = {
            "--keepalive-misses": self.keepalive_misses,
            "--failure-threshold": self.failure_threshold,
            "--flap-connects": self.flap_connects,
            "--udp-max-flows": self.udp_max_flows,
        }
        for flag, count in counts.items():
            if count < 1:
                raise ConfigError(f"{flag} must be at least 1 (got {count})")
        if self.keepalive_s < 0:
            raise ConfigError("--keepalive must be 0s (off) or more")
        if self.balance not in BALANCE_CHOICES:
            raise ConfigError(f"--balance {self.balance!r}: choose one of {BALANCE_CHOICES}")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"--listen port {self.listen_port} is not a TCP port")

    @property
    def host_key_path(self) -> Path:
        return self.data_dir / "host_key"

    @property
    def ping_timeout_s(self) -> float:
        """The keepalive timeout actually used (never longer than the interval)."""
        return min(self.keepalive_timeout_s, self.keepalive_s)

    @property
    def dead_peer_bound_s(self) -> float:
        """Longest time a silent connector stays in its pools."""
        return self.keepalive_misses * self.keepalive_s + self.ping_timeout_s
