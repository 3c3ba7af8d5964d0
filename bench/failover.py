"""Failover benchmark: app connections during SIGKILL, SIGSTOP and a rolling restart.

Two connectors serve one port of a gateway; a load generator opens new app
connections at a fixed rate (each a small request/response) while one of
three events happens:

- ``sigkill``  one connector is killed outright;
- ``sigstop``  one connector is frozen (a silent peer: the gateway only
  learns from missed keepalives);
- ``rolling``  both connectors are restarted one after the other with
  SIGTERM (drain) and started again, as an upgrade would.

For each it reports the app connections that failed (the gateway could not
place them on any connector), the ones cut (riding on a connector at the
moment it was killed or frozen), and the connect time (to the endpoint's greeting) at p50/p99
over the whole run and p99/max during the event window, with the number
of app connections that took over 100 ms to connect (the ones caught
behind the failing connector). Prints a table and
writes JSON to ``.bench/failover.json``::

    python bench/failover.py                      # 200 conn/s, 20 s per event
    python bench/failover.py --duration 8 --scenario sigstop

Each scenario runs on a fresh gateway, connectors and endpoint (all real
processes on loopback, killed when it ends); see failover_harness.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover_harness import Cluster, LoadGen, summarize, wait_until

ROOT = Path(__file__).resolve().parents[1]
KEEPALIVE_S = 1.0
KEEPALIVE_TIMEOUT_S = 1.0
MISSES = 3
OPEN_TIMEOUT_S = 2.0
GATEWAY_ARGS = [
    "--keepalive",
    f"{KEEPALIVE_S:g}s",
    "--keepalive-timeout",
    f"{KEEPALIVE_TIMEOUT_S:g}s",
    "--keepalive-misses",
    str(MISSES),
    "--channel-open-timeout",
    f"{OPEN_TIMEOUT_S:g}s",
]
DETECTION_BOUND_S = MISSES * KEEPALIVE_S + KEEPALIVE_TIMEOUT_S


def run_scenario(name: str, rate: float, duration_s: float, lead_s: float) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix=f"qanat-failover-{name}-") as tmp,
        Cluster(Path(tmp), gateway_args=GATEWAY_ARGS) as cluster,
    ):
        for connector in ("a", "b"):
            cluster.start_connector(connector, args=["--drain-timeout", "10s"])
        for connector in ("a", "b"):
            cluster.wait_connected(connector)
        wait_until(lambda: len(cluster.pool()) == 2, 10, "both connectors in the pool")
        load = LoadGen(cluster.app_port, rate=rate, duration_s=duration_s).start()
        extra: dict[str, Any] = {}
        try:
            time.sleep(lead_s)
            start = time.monotonic()
            if name == "sigkill":
                cluster.connectors["b"].signal(signal.SIGKILL)
                wait_until(lambda: cluster.tunnel_closed("b"), 10, "b's tunnel to close")
                extra["removed_after_s"] = round(time.monotonic() - start, 3)
                end = start + 2.0
            elif name == "sigstop":
                frozen = cluster.connectors["b"]
                frozen.signal(signal.SIGSTOP)
                try:
                    wait_until(
                        lambda: cluster.tunnel_closed("b", "dead peer"),
                        DETECTION_BOUND_S + 5,
                        "b to be declared dead",
                        poll_s=0.01,
                    )
                    extra["removed_after_s"] = round(time.monotonic() - start, 3)
                    extra["detection_bound_s"] = DETECTION_BOUND_S
                finally:
                    frozen.signal(signal.SIGCONT)
                end = start + DETECTION_BOUND_S + OPEN_TIMEOUT_S
            else:
                for connector in ("a", "b"):
                    connects = cluster.connected_count(connector)
                    cluster.connectors[connector].signal(signal.SIGTERM)
                    cluster.connectors[connector].wait_exit(30)
                    cluster.restart(connector)
                    cluster.wait_connected(connector, connects + 1)
                    time.sleep(0.5)
                end = time.monotonic()
                extra["restart_took_s"] = round(end - start, 3)
            outcomes = load.join()
        finally:
            load.stop()
        gateway_failed = cluster.gateway_failed()
        whole = summarize(outcomes, gateway_failed=gateway_failed)
        during = summarize(outcomes, start, end, gateway_failed=gateway_failed)
        return {
            "scenario": name,
            "rate_per_s": rate,
            "duration_s": duration_s,
            "event_at_s": lead_s,
            "event_window_s": round(end - start, 3),
            "whole": whole.as_dict(),
            "during_event": during.as_dict(),
            **extra,
        }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<9} {'conns':>6} {'failed':>6} {'cut':>4} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'event p99':>9} {'event max':>9} {'event conns':>11} {'>100ms':>6}  note"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        w, d = r["whole"], r["during_event"]
        if "removed_after_s" in r:
            note = f"out of the pool after {r['removed_after_s']:.2f}s"
        else:
            note = f"both restarted in {r['restart_took_s']:.1f}s"
        lines.append(
            f"{r['scenario']:<9} {w['connections']:>6} {w['failed']:>6} {w['cut']:>4} "
            f"{fmt(w['p50_connect_ms']):>7} {fmt(w['p99_connect_ms']):>7} "
            f"{fmt(d['p99_connect_ms']):>9} {fmt(d['max_connect_ms']):>9} "
            f"{d['connections']:>11} {d['connect_over_100ms']:>6}  {note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="new app connections per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per event")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["sigkill", "sigstop", "rolling"],
        help="run only these (repeatable; default all three)",
    )
    parser.add_argument("--out", default=str(ROOT / ".bench" / "failover.json"))
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["sigkill", "sigstop", "rolling"]
    lead_s = min(5.0, args.duration / 4)
    results = []
    for name in scenarios:
        print(f"failover: {name} ({args.rate:g} conn/s for {args.duration:g}s) ...", flush=True)
        results.append(run_scenario(name, args.rate, args.duration, lead_s))
    doc = {
        "benchmark": "failover",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "gateway_flags": GATEWAY_ARGS,
        "detection_bound_s": DETECTION_BOUND_S,
        "definitions": {
            "failed": "the gateway could not place the app connection on any connector "
            "(its own count), or it never reached the gateway",
            "cut": "placed on a connector, then lost when that connector was killed or frozen",
            "connect": "from connect() to the endpoint's greeting",
        },
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nwritten to {out}")
    failed = sum(r["whole"]["failed"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
