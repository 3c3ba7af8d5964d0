"""Traffic per endpoint and per connector: deltas of the gateway's counters (pure).

The gateway keeps cumulative counters (per tunnel, per endpoint) in memory.
:class:`TrafficMeter` remembers the last value it saw of each and turns the
next snapshot into :class:`~qanat.store.records.TrafficSample` deltas, which
the reporter adds to the current minute's bucket in the database
(``traffic_buckets``). A counter that went down (an endpoint rebuilt after
all its connectors left) starts again from zero. Idle rows are not written.

For TCP, ``connections`` are app connections and ``bytes`` both directions
(per connector including open connections so far, per endpoint of finished
connections); for UDP, ``connections`` are datagrams (in + out) and
``failures`` dropped datagrams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qanat.store.records import TrafficSample

if TYPE_CHECKING:
    from qanat.gateway.status import GatewayStatus, PortStatus, TunnelStatus

_Key = tuple[str, ...]


class TrafficMeter:
    """Turns successive gateway status snapshots into deltas.

    Args:
        node: this gateway node's name (shown as the connectors' session detail).
    """

    def __init__(self, node: str) -> None:
        self._node = node
        self._last: dict[_Key, tuple[int, int, int]] = {}

    def sample(self, status: GatewayStatus) -> list[TrafficSample]:
        """Deltas since the previous call, from ``Gateway.status()``."""
        samples: list[TrafficSample] = []
        seen: set[_Key] = set()
        for stage_key, entry in status.stages.items():
            for tunnel in entry.connectors:
                samples += self._tunnel(stage_key, tunnel, seen)
            for endpoint in entry.endpoints:
                samples += self._endpoint(stage_key, endpoint, seen)
        # Forget what disappeared, so that a reused key starts from zero.
        for key in [k for k in self._last if k not in seen]:
            del self._last[key]
        return samples

    def closed(self, stage_key: str, snapshot: TunnelStatus) -> list[TrafficSample]:
        """The last delta of a tunnel that just closed (its final counters)."""
        seen: set[_Key] = set()
        samples = self._tunnel(stage_key, snapshot, seen)
        for key in seen:
            self._last.pop(key, None)
        return samples

    def _tunnel(self, stage_key: str, snap: TunnelStatus, seen: set[_Key]) -> list[TrafficSample]:
        tunnel = str(snap.tunnel)
        key = ("connector", stage_key, tunnel)
        values = (
            snap.connections_total,
            snap.connections_failed,
            snap.bytes_to_endpoint + snap.bytes_to_app,
        )
        detail = f"tunnel {tunnel} on {self._node}"
        name = snap.connector or "connector"
        return self._delta(key, values, seen, stage_key, "connector", name, "tcp", detail)

    def _endpoint(self, stage_key: str, snap: PortStatus, seen: set[_Key]) -> list[TrafficSample]:
        if snap.udp is not None:
            values = (snap.udp.packets_in + snap.udp.packets_out, snap.udp.dropped, 0)
        else:
            values = (snap.connections_total, snap.connections_failed, snap.bytes_total)
        port = str(snap.port)
        key = ("endpoint", stage_key, port, snap.proto)
        return self._delta(key, values, seen, stage_key, "endpoint", port, snap.proto, "")

    def _delta(
        self,
        key: _Key,
        values: tuple[int, int, int],
        seen: set[_Key],
        stage_key: str,
        kind: str,
        name: str,
        protocol: str,
        detail: str,
    ) -> list[TrafficSample]:
        seen.add(key)
        last = self._last.get(key, (0, 0, 0))
        self._last[key] = values
        delta = tuple(v - p if v >= p else v for v, p in zip(values, last, strict=True))
        if not any(delta):
            return []
        return [
            TrafficSample(
                stage_key=stage_key,
                kind=kind,
                name=name,
                protocol=protocol,
                connections=delta[0],
                failures=delta[1],
                bytes=delta[2],
                detail=detail,
            )
        ]
