"""``make cluster-demo``: several gateway nodes on this machine, shown step by step.

Starts (all on loopback, free ports, a temporary directory) PostgreSQL,
nats-server, HAProxy, one ``qanat portal --nats`` and three ``qanat gateway
--nats`` nodes (the test bed of tests/support/clusterbed.py), connects one
connector to node n0 only, sends an app connection to node n1 (which has no
connector: it is carried over the node link), deactivates the stage and
shows every node closing the port, then stops everything.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.clusterbed import ClusterBed, exchange, missing_parts  # noqa: E402


def say(text: str) -> None:
    print(text, flush=True)


def wait(predicate: object, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster-demo: timed out waiting for {what}")
        time.sleep(0.02)


def refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def main() -> int:
    why = missing_parts()
    if why is not None:
        say(f"cluster-demo needs {why}; run `make system-deps` as root")
        return 1
    with tempfile.TemporaryDirectory(prefix="qanat-cluster-demo-") as tmp:
        bed = ClusterBed(Path(tmp))
        try:
            say("starting PostgreSQL, nats-server, HAProxy, qanat portal and 3 gateway nodes ...")
            bed.start()
            assert bed.pg is not None
            assert bed.nats is not None
            assert bed.haproxy is not None
            say(f"  PostgreSQL  127.0.0.1:{bed.pg.port}")
            say(f"  NATS        {bed.nats.url} (JetStream on)")
            say(f"  HAProxy     connectors {bed.front_url}, apps 127.0.0.1:{bed.app_address[1]}")
            say(f"  portal      {bed.api.removesuffix('/api/v1')}/")
            for node in bed.nodes:
                say(
                    f"  node {node.name}     front door 127.0.0.1:{node.front_port}, node link "
                    f"127.0.0.1:{node.link_port}, stage endpoints on {node.bind}"
                )
            say(f"stage acme/Development activated: {bed.address}")
            n0, n1 = bed.nodes[0], bed.nodes[1]
            say(f"connecting a connector to node {n0.name} only ({bed.nodes[0].name}'s front door)")
            bed.address = bed.address.replace(bed.front_url, f"http://127.0.0.1:{n0.front_port}")
            bed.start_connector("demo")
            wait(lambda: bed.holder("demo") is n0, "the connector on n0")
            say(f"  {n0.name}: connector demo connected, serving secure-gateway:{bed.app_port}")

            def n1_serves() -> bool:
                try:
                    exchange(n1.bind, bed.app_port, b"ping", timeout_s=2)
                except OSError:
                    return False
                return True

            wait(n1_serves, "node n1 learning of the connector through presence")
            say(f"  {n1.name}: learnt through NATS presence that {n0.name} holds the port")
            message = b"hello from an app connected to n1\n"
            started = time.perf_counter()
            exchange(n1.bind, bed.app_port, message)
            took = (time.perf_counter() - started) * 1e3
            say(
                f"app -> {n1.name} ({n1.bind}:{bed.app_port}) -> node link -> {n0.name} -> "
                f"connector -> endpoint: echoed {len(message)} bytes in {took:.1f} ms"
            )
            exchange(*bed.app_address, message)
            say("app -> HAProxy -> any node: echoed as well")
            started = time.perf_counter()
            bed.request("POST", "/orgs/acme/stages/Development/deactivate", {})
            wait(lambda: all(refuses(n.bind, bed.app_port) for n in bed.nodes), "the port closed")
            took = (time.perf_counter() - started) * 1e3
            say(
                f"deactivated in the portal: the port refuses connections on all "
                f"{len(bed.nodes)} nodes {took:.0f} ms after the API call (a NATS message)"
            )
            say("stopping everything")
        finally:
            bed.close()
    say("cluster-demo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
