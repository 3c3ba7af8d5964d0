"""Bind-stall benchmark: how long the gateway's loop is held while 1,000 ports come and go.

In-process gateway and connector on one uvloop loop; a ticker task measures
the longest time the loop was held while a connector declaring 1,000 ports
connects (1,000 listeners created) and disconnects (1,000 closed). Target:
max gap < 150 ms (measured ~16 ms on a quiet 2-core machine). The test
``tests/adapter/test_pool_bind.py`` runs the same measurement and asserts
only behaviour (all bound, all closed, the loop kept running)::

    python bench/bindstall.py            # one line with pass/miss, JSON in .bench/

As every benchmark here it exits 1 only when something broke (ports not
bound or not closed), never because the target was missed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from qanat.connector.egress import Egress
from qanat.connector.options import ConnectOptions
from qanat.connector.session import Session, Stats
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id, new_token

TARGET_MAX_GAP_MS = 150.0


def free_port_range(count: int) -> int:
    """A base port with ``count`` consecutive free TCP ports on loopback (bounded tries)."""
    for base in range(20000, 60000 - count, 997):
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


async def measure(base: int) -> dict[str, Any]:
    token, address_id = new_token(), new_address_id()
    stages = MemoryStageSource()
    stages.put(StageConfig(key="dev", address_id=address_id, token_hashes=(hash_token(token),)))
    settings = GatewaySettings(
        data_dir=Path(tempfile.mkdtemp(prefix="i4-bind-")), listen_port=0, keepalive_s=0
    )
    gateway = Gateway(settings, stages)
    await gateway.start()
    host, port = gateway.address
    address = f"http://{host}:{port}/{address_id}"
    options = ConnectOptions(
        address=address,
        remotes=tuple(decode_remotes([f"R:{base + i}:127.0.0.1:9" for i in range(1000)])),
        headers=(("token", token),),
        keepalive_s=0,
    )
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    result: dict[str, Any] = {"ticks_during_bind": []}
    try:
        for _ in range(2):
            session = Session(options, "1", Stats(), Egress(options))
            before = len(gaps)
            await session.connect()
            result["ticks_during_bind"].append(len(gaps) - before)
            result["ports"] = len(gateway.ports.open)
            await session.close()
            deadline = time.monotonic() + 10
            while gateway.ports.open and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            result["left"] = len(gateway.ports.open)
    finally:
        done.set()
        await tick
        await gateway.close()
    result["max_gap_ms"] = max(gaps) * 1e3
    return result


def main() -> int:
    result = uvloop.run(measure(free_port_range(1000)))
    result["target_max_gap_ms"] = TARGET_MAX_GAP_MS
    verdict = "pass" if result["max_gap_ms"] < TARGET_MAX_GAP_MS else "miss"
    print(
        f"bind stall: 1000 ports bound and closed twice, longest loop stall "
        f"{result['max_gap_ms']:.1f} ms (target < {TARGET_MAX_GAP_MS:g} ms) {verdict}"
    )
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "bindstall.json").write_text(json.dumps(result, indent=2))
    broke = result["ports"] != 1000 or result["left"] != 0
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
