"""Several gateway nodes: the cross-node hop and the control bus, measured.

``make bench`` runs this after the single-node benchmarks (``--quick`` for
fewer samples). It starts the cluster test bed of ``tests/support/clusterbed.py``
on loopback (PostgreSQL, nats-server, HAProxy, one portal, three gateway
nodes) with one ``qanat connect`` and measures:

- 64 B round trip p50/p99, connect + first round trip p50/p99, and one
  echoed stream (MB/s each way) through the node that holds the connector
  ("local") and through a node that does not ("cross-node", one hop over
  the node link);
- control latency: from the portal API call that deactivates the stage to
  the moment the stage's port refuses connections on every node, p50/p99/max
  over 50 trials;
- recovery after ``kill -9`` of the node holding the connector: seconds
  until the connector is connected to a survivor, and until every survivor
  serves the port again.

Figures go to stdout and ``.bench/cluster.json``. Everything is bounded in
count and time; every process is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.clusterbed import ClusterBed, NodeProc, exchange, missing_parts  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def round_trips(host: str, port: int, count: int) -> list[float]:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b"x" * 64
        buf = bytearray(64)
        times = []
        for i in range(count + 200):
            started = time.perf_counter_ns()
            sock.sendall(payload)
            got = 0
            while got < 64:
                n = sock.recv_into(memoryview(buf)[got:])
                if not n:
                    raise ConnectionError("closed")
                got += n
            if i >= 200:
                times.append((time.perf_counter_ns() - started) / 1e3)
        return times


def connects(host: str, port: int, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        exchange(host, port, b"y" * 64)
        times.append((time.perf_counter_ns() - started) / 1e3)
    return times


def stream(host: str, port: int, size: int) -> float:
    """MB/s of an echoed stream (``size`` bytes each way)."""
    import threading

    chunk = b"z" * 65536
    received = 0
    with socket.create_connection((host, port), timeout=30) as sock:

        def reader() -> None:
            nonlocal received
            while received < size:
                data = sock.recv(1 << 20)
                if not data:
                    return
                received += len(data)

        thread = threading.Thread(target=reader)
        started = time.perf_counter()
        thread.start()
        sent = 0
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
        thread.join(120)
        took = time.perf_counter() - started
    if received < size:
        raise ConnectionError(f"stream: {received} of {size} bytes came back")
    return size / took / 1e6


def serves(node: NodeProc, port: int) -> bool:
    try:
        exchange(node.bind, port, b"p", timeout_s=2)
    except OSError:
        return False
    return True


def refuses(node: NodeProc, port: int) -> bool:
    try:
        with socket.create_connection((node.bind, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def wait(predicate: object, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--out", default=str(REPO / ".bench" / "cluster.json"))
    args = parser.parse_args()
    why = missing_parts()
    if why is not None:
        print(f"cluster bench skipped: {why}", file=sys.stderr)
        return 0
    # 50 deactivation trials either way: the figure the issue asks for is their p99.
    rtts, conns, trials = (500, 100, 50) if args.quick else (3000, 300, 50)
    size = (64 if args.quick else 256) << 20
    results: dict[str, object] = {"quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="qanat-cluster-bench-") as tmp:
        bed = ClusterBed(Path(tmp))
        try:
            print("starting PostgreSQL, NATS, HAProxy, a portal and 3 nodes", file=sys.stderr)
            bed.start()
            bed.start_connector("bench")
            wait(lambda: bed.holder("bench"), "the connector", 30)
            wait(lambda: all(serves(n, bed.app_port) for n in bed.nodes), "every node", 30)
            local = bed.holder("bench")
            assert local is not None
            remote = next(n for n in bed.nodes if n is not local)
            for label, node in (("local", local), ("cross_node", remote)):
                print(f"measuring {label} through {node.name}", file=sys.stderr)
                rt = round_trips(node.bind, bed.app_port, rtts)
                ct = connects(node.bind, bed.app_port, conns)
                results[label] = {
                    "rtt_us_p50": round(pct(rt, 50), 1),
                    "rtt_us_p99": round(pct(rt, 99), 1),
                    "connect_rtt_us_p50": round(pct(ct, 50), 1),
                    "connect_rtt_us_p99": round(pct(ct, 99), 1),
                    "stream_mb_s": round(stream(node.bind, bed.app_port, size), 1),
                }
            print(f"control latency, {trials} trials", file=sys.stderr)
            latencies = []
            stage = "/orgs/acme/stages/Development"
            for _ in range(trials):
                wait(lambda: all(serves(n, bed.app_port) for n in bed.nodes), "serving", 30)
                started = time.perf_counter()
                bed.request("POST", stage + "/deactivate", {})
                wait(lambda: all(refuses(n, bed.app_port) for n in bed.nodes), "closed", 10)
                latencies.append((time.perf_counter() - started) * 1e3)
                bed.request("POST", stage + "/activate", {})
            results["deactivation_ms"] = {
                "trials": trials,
                "p50": round(pct(latencies, 50), 1),
                "p99": round(pct(latencies, 99), 1),
                "max": round(max(latencies), 1),
            }
            print("kill -9 of the connector's node", file=sys.stderr)
            wait(lambda: all(serves(n, bed.app_port) for n in bed.nodes), "serving", 30)
            holder = bed.holder("bench")
            assert holder is not None
            marks = bed.marks()
            survivors = [n for n in bed.nodes if n is not holder]
            killed = time.monotonic()
            bed.kill_node(holder)
            wait(lambda: bed.holder("bench", marks) in survivors, "the connector back", 30)
            back = time.monotonic() - killed
            wait(lambda: all(serves(n, bed.app_port) for n in survivors), "survivors", 30)
            results["kill_recovery_s"] = {
                "connector_back": round(back, 2),
                "survivors_serving": round(time.monotonic() - killed, 2),
            }
        finally:
            bed.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
