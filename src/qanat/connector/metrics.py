"""The connector's metrics and readiness, next to the statistics they read.

Read at scrape time from the running :class:`~qanat.connector.runner.Connector`
(its :class:`~qanat.connector.session.Stats` and the open splices); turned
into :class:`~qanat.telemetry.counters.Family` rows, so prometheus_client
stays inside ``telemetry/``. On this side a splice's TCP end is the private
endpoint: what it sends goes to the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qanat import __version__
from qanat.telemetry.counters import Exposition, Family, build_info
from qanat.telemetry.health import Health

if TYPE_CHECKING:
    from qanat.connector.runner import Connector


def connector_families(connector: Connector) -> list[Family]:
    stats = connector.stats
    session = connector.session
    splices = list(session.splices) if session is not None else []
    connected = stats.connected_since is not None

    def one(name: str, help_: str, value: float, kind: str = "gauge") -> Family:
        family = Family(name, help_, "counter" if kind == "counter" else "gauge")
        family.add((), value)
        return family

    out = [
        build_info(__version__, "connector"),
        one("qanat_connector_up", "1 while the tunnel to the gateway is up.", int(connected)),
    ]
    if connected:
        out.append(
            one(
                "qanat_connector_connected_since_seconds",
                "Unix time the current tunnel was established.",
                float(stats.connected_since or 0.0),
            )
        )
    out += [
        one("qanat_connector_connect_attempts", "Tunnel attempts.", stats.attempts, "counter"),
        one("qanat_connector_sessions", "Tunnels established.", stats.sessions, "counter"),
        one(
            "qanat_connector_reconnects",
            "Attempts after the first one (after a failure or a lost tunnel).",
            max(0, stats.attempts - 1),
            "counter",
        ),
        one("qanat_connector_channels_open", "Channels being carried now.", len(splices)),
        one(
            "qanat_connector_channels",
            "Channels the gateway opened.",
            stats.channels_total,
            "counter",
        ),
        one(
            "qanat_connector_channels_refused",
            "Channels refused because the endpoint could not be dialled.",
            stats.channels_refused,
            "counter",
        ),
        one(
            "qanat_connector_channels_early",
            "Channels confirmed before their dial (a gateway with early-open).",
            stats.channels_early,
            "counter",
        ),
    ]
    traffic = Family(
        "qanat_connector_bytes",
        "Bytes carried between endpoints and the gateway, by direction.",
        "counter",
        ("direction",),
    )
    traffic.add(("to_app",), stats.bytes_up + sum(s.sent for s in splices))
    traffic.add(("to_endpoint",), stats.bytes_down + sum(s.received for s in splices))
    out.append(traffic)
    if stats.last_rtt_s is not None:
        out.append(
            one(
                "qanat_connector_keepalive_rtt_seconds",
                "Last keepalive round trip to the gateway.",
                stats.last_rtt_s,
            )
        )
    return out


def connector_exposition(connector: Connector) -> Exposition:
    return Exposition(lambda: connector_families(connector))


def connector_health(connector: Connector) -> Health:
    """The connector is ready while its tunnel is up."""
    health = Health()

    async def tunnel() -> str | None:
        return None if connector.stats.connected_since is not None else "no tunnel to the gateway"

    health.add_check("tunnel", tunnel)
    return health
