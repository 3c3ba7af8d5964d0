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

from collections.abc import Mapping
from typing import Any

from qanat.store.records import TrafficSample

_Key = tuple[str, ...]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


class TrafficMeter:
    """Turns successive gateway status snapshots into deltas.

    Args:
        node: this gateway node's name (shown as the connectors' session detail).
    """

    def __init__(self, node: str) -> None:
        self._node = node
        self._last: dict[_Key, tuple[int, int, int]] = {}

    def sample(self, status: Mapping[str, Any]) -> list[TrafficSample]:
        """Deltas since the previous call, from ``Gateway.status()``."""
        samples: list[TrafficSample] = []
        seen: set[_Key] = set()
        stages = status.get("stages", {})
        for stage_key, entry in stages.items() if isinstance(stages, Mapping) else ():
            for snap in entry.get("connectors", ()):
                samples += self._tunnel(str(stage_key), snap, seen)
            for snap in entry.get("endpoints", ()):
                samples += self._endpoint(str(stage_key), snap, seen)
        # Forget what disappeared, so that a reused key starts from zero.
        for key in [k for k in self._last if k not in seen]:
            del self._last[key]
        return samples

    def closed(self, stage_key: str, snapshot: Mapping[str, Any]) -> list[TrafficSample]:
        """The last delta of a tunnel that just closed (its final counters)."""
        seen: set[_Key] = set()
        samples = self._tunnel(stage_key, snapshot, seen)
        for key in seen:
            self._last.pop(key, None)
        return samples

    def _tunnel(
        self, stage_key: str, snap: Mapping[str, Any], seen: set[_Key]
    ) -> list[TrafficSample]:
        tunnel = str(snap.get("tunnel", "?"))
        name = str(snap.get("identity") or snap.get("connector") or "connector")
        key = ("connector", stage_key, tunnel)
        values = (
            _int(snap.get("connections_total")),
            _int(snap.get("connections_failed")),
            _int(snap.get("bytes_to_endpoint")) + _int(snap.get("bytes_to_app")),
        )
        protocol = "tcp"
        detail = f"tunnel {tunnel} on {self._node}"
        return self._delta(key, values, seen, stage_key, "connector", name, protocol, detail)

    def _endpoint(
        self, stage_key: str, snap: Mapping[str, Any], seen: set[_Key]
    ) -> list[TrafficSample]:
        label = str(snap.get("endpoint", ""))
        if label.endswith("/udp"):
            port = label.removesuffix("/udp").rpartition(":")[2]
            values = (
                _int(snap.get("packets_in")) + _int(snap.get("packets_out")),
                _int(snap.get("dropped")),
                0,
            )
            protocol = "udp"
        else:
            port = str(snap.get("port") or label.rpartition(":")[2])
            values = (
                _int(snap.get("connections_total")),
                _int(snap.get("connections_failed")),
                _int(snap.get("bytes_total")),
            )
            protocol = "tcp"
        if not port.isdigit():
            return []
        key = ("endpoint", stage_key, port, protocol)
        return self._delta(key, values, seen, stage_key, "endpoint", port, protocol, "")

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
