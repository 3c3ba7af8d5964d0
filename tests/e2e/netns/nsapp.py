"""App-side probes, run inside a cloud namespace with ``ip netns exec``.

Each mode prints one JSON line and exits; every loop is bounded in count and
time. Names like ``secure-gateway`` resolve through the namespace's
/etc/hosts (``/etc/netns/<ns>/hosts``).

    http HOST PORT [CAFILE]       one GET (HTTPS with CAFILE): {"ok", "body" | "error"}
    smtp HOST PORT                greeting + one echoed line
    probe HOST TIMEOUT PORT...    TCP connect only: {port: connected|refused|timeout|...}
    load HOST PORT COUNT          COUNT GETs in a row: {"ok": n, "max_s": ...}
    flood HOST PORT COUNT         COUNT connections at once (64 in flight): answers seen
    poll HOST PORT MAX_S          GET every 20 ms; "READY" after the first answer,
                                  then {"cut_at": <monotonic>} at the first failure
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ANSWER = b"endpoint says hello"


def get(host: str, port: int, cafile: str | None = None, timeout_s: float = 5.0) -> str:
    """One HTTP GET; returns the body, raises OSError on any failure."""
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        sock: socket.socket = raw
        if cafile:
            context = ssl.create_default_context(cafile=cafile)
            sock = context.wrap_socket(raw, server_hostname=host)
        sock.sendall(f"GET /orders HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if ANSWER not in data:
        raise ConnectionError(f"no endpoint answer ({data[:60]!r})")
    return data.split(b"\r\n\r\n", 1)[-1].decode()


def smtp(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5.0) as sock:
        stream = sock.makefile("rwb")
        greeting = stream.readline(1024)
        stream.write(b"HELO app\r\n")
        stream.flush()
        reply = stream.readline(1024)
    if not greeting:
        raise ConnectionError("closed without a greeting")
    return (greeting + reply).decode()


def probe(host: str, port: int, timeout_s: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            try:
                data = sock.recv(64)
            except TimeoutError:
                data = b"(silent)"
            return "connected: " + data.decode(errors="replace").strip()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc.strerror or exc}"


async def flood(host: str, port: int, count: int) -> dict[str, int]:
    limit = asyncio.Semaphore(64)
    seen = {"answers": 0, "closed": 0, "refused": 0, "timeout": 0}

    async def one() -> None:
        async with limit:
            try:
                async with asyncio.timeout(2.0):
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(b"GET / HTTP/1.0\r\n\r\n")
                    data = await reader.read(1024)
                    writer.close()
                seen["answers" if ANSWER in data else "closed"] += 1
            except ConnectionRefusedError:
                seen["refused"] += 1
            except ConnectionError:
                seen["closed"] += 1
            except TimeoutError:
                seen["timeout"] += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return seen


def poll(host: str, port: int, max_s: float) -> dict[str, float | str]:
    end = time.monotonic() + max_s
    ready = False
    while time.monotonic() < end:
        try:
            get(host, port, timeout_s=0.5)
        except OSError:
            if ready:
                return {"cut_at": time.monotonic()}
        else:
            if not ready:
                print("READY", flush=True)
                ready = True
        time.sleep(0.02)
    return {"error": "still answered" if ready else "never answered"}


def main(argv: list[str]) -> None:
    mode, host = argv[0], argv[1]
    result: object
    if mode == "http":
        try:
            result = {
                "ok": True,
                "body": get(host, int(argv[2]), argv[3] if len(argv) > 3 else None),
            }
        except OSError as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    elif mode == "smtp":
        try:
            result = {"ok": True, "text": smtp(host, int(argv[2]))}
        except OSError as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    elif mode == "probe":
        timeout_s, ports = float(argv[2]), [int(p) for p in argv[3:]]
        with ThreadPoolExecutor(len(ports)) as pool:
            outcomes = pool.map(lambda p: probe(host, p, timeout_s), ports)
        result = dict(zip((str(p) for p in ports), outcomes, strict=True))
    elif mode == "load":
        latencies, errors = [], []
        for _ in range(int(argv[3])):
            started = time.monotonic()
            try:
                get(host, int(argv[2]))
                latencies.append(time.monotonic() - started)
            except OSError as exc:
                errors.append(str(exc))
            time.sleep(0.02)
        result = {"ok": len(latencies), "errors": errors, "max_s": max(latencies, default=-1)}
    elif mode == "flood":
        started = time.monotonic()
        result = asyncio.run(flood(host, int(argv[2]), int(argv[3])))
        result["elapsed_ms"] = round((time.monotonic() - started) * 1e3)
    elif mode == "poll":
        result = poll(host, int(argv[2]), float(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
