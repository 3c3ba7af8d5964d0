"""qanat benchmark: direct vs OpenSSH ``ssh -R`` vs qanat vs the Go peer, plus WebSocket libraries.

``make bench`` runs this. Everything happens on 127.0.0.1 and is started and
stopped by this script:

1. an endpoints process (``endpoints.py``: echo and sink);
2. for each path in turn (direct, ssh, qanat, go), its processes are started,
   measured by the load generator in this process (``loadgen.py``) and
   stopped before the next path starts, so paths never compete for the CPU;
3. the WebSocket library comparison (``wslib.py``).

A table goes to stdout and the same figures to ``.bench/results.json``;
progress goes to stderr. See docs/benchmarks.md for the method.

Safety: every loop is bounded in count and time, every socket has a timeout,
a watchdog alarm ends the whole run, and every child runs in its own process
group, stopped in a ``finally`` (also on SIGINT/SIGTERM).

Exit status: 0 when the run completed (a path that is not available, such as
a qanat without its CLI, still counts as completed); 1 when a path or a
measurement failed; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path as FsPath
from typing import Any

import loadgen
import paths
import report
import wslib
from hostload import HostLoad
from loadgen import BulkPlan, PhaseTimeout
from procs import ProcessSet

REPO = FsPath(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
SECTIONS = ("direct", "ssh", "qanat", "go", "wslib")
#: Pause before reading RSS, so closed connections are reaped and counts settle.
SETTLE_S = 0.5
MiB = 1 << 20
#: Share of the machine's CPU used by other processes above which we warn.
NOISY_PERCENT = 5


class BenchTimeout(BaseException):
    """The watchdog alarm: the whole run took too long.

    A BaseException, so that no ``except Exception`` on the way (a section
    recording its own failure) can swallow it.
    """


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does (full or --quick)."""

    bulk: BulkPlan = field(default_factory=BulkPlan)
    rtt_count: int = 5000
    rtt_warmup: int = 500
    connect_count: int = 500
    connect_warmup: int = 20
    idle_count: int = 1000
    phase_limit_s: float = 30.0
    idle_limit_s: float = 60.0
    watchdog_s: int = 540
    ws: wslib.WsPlan = field(default_factory=wslib.WsPlan)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            bulk=BulkPlan(warmup_bytes=8 * MiB, target_s=0.3, max_bytes=256 * MiB, reps=3),
            rtt_count=1000,
            rtt_warmup=100,
            connect_count=100,
            connect_warmup=10,
            idle_count=250,
            watchdog_s=240,
            ws=wslib.WsPlan.quick(),
        )


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure becomes ``{"error": ...}``, not a crash."""
    try:
        return fn()
    except (OSError, RuntimeError, PhaseTimeout) as exc:
        progress(f"  {name}: error: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def measure_idle(path: paths.Path, plan: Plan) -> dict[str, Any]:
    """RSS growth of the gateway (and connector) per idle open connection.

    Runs first on a fresh tunnel: after the other phases, memory freed by
    their connections sits in the allocator and would be reused here, hiding
    the real cost. RSS is also read at the halfway point, so the JSON shows
    whether growth is linear (the second half's slope) or a one-off.
    """
    server, client = path.server, path.client
    assert server is not None
    assert client is not None
    half = plan.idle_count // 2
    time.sleep(SETTLE_S)
    rss0 = (server.rss_bytes(), client.rss_bytes())
    socks: list[Any] = []
    try:
        loadgen.open_idle(path.host, path.echo_port, half, plan.idle_limit_s, socks)
        time.sleep(SETTLE_S)
        rss_half = (server.rss_bytes(), client.rss_bytes())
        loadgen.open_idle(
            path.host, path.echo_port, plan.idle_count - half, plan.idle_limit_s, socks
        )
        time.sleep(SETTLE_S)
        rss1 = (server.rss_bytes(), client.rss_bytes())
        if not (server.alive() and client.alive()):
            raise RuntimeError("a tunnel process died while connections were open")
    finally:
        for sock in socks:
            sock.close()
    n = len(socks)
    second = n - half
    return {
        "connections": n,
        "server_rss_bytes": [rss0[0], rss_half[0], rss1[0]],
        "client_rss_bytes": [rss0[1], rss_half[1], rss1[1]],
        "server_KiB_per_conn": (rss1[0] - rss0[0]) / n / 1024,
        "client_KiB_per_conn": (rss1[1] - rss0[1]) / n / 1024,
        "server_KiB_per_conn_second_half": (rss1[0] - rss_half[0]) / second / 1024,
        "client_KiB_per_conn_second_half": (rss1[1] - rss_half[1]) / second / 1024,
    }


class CpuMeter:
    """CPU time the tunnel's two ends spend on a phase, per unit of work:
    it tells whether the gateway or the connector is the bottleneck."""

    def __init__(self, path: paths.Path) -> None:
        self.ends = {"server": path.server, "client": path.client}
        self.start = {k: c.cpu_seconds() for k, c in self.ends.items() if c is not None}

    def attribute(self, phase: dict[str, Any], unit: str, units: float) -> None:
        if "error" in phase or units <= 0:
            return
        for end, child in self.ends.items():
            if child is not None:
                used = child.cpu_seconds() - self.start[end]
                phase[f"{end}_cpu_us_per_{unit}"] = used / units * 1e6


def measure_path(path: paths.Path, plan: Plan) -> dict[str, Any]:
    res: dict[str, Any] = {"status": "ok", "label": path.label, "short": path.name}
    host = path.host
    if path.server is not None:
        res["idle"] = guarded(f"{path.name} idle", lambda: measure_idle(path, plan))
        if "server_KiB_per_conn" in res["idle"]:
            progress(
                f"  {path.name}: {res['idle']['connections']} idle connections, gateway "
                f"{res['idle']['server_KiB_per_conn']:.1f} KiB/conn"
            )
    cpu = CpuMeter(path)
    res["bulk"] = guarded(
        f"{path.name} bulk", lambda: loadgen.measure_bulk(host, path.sink_port, plan.bulk)
    )
    cpu.attribute(res["bulk"], "MiB", res["bulk"].get("bytes_total", 0) / MiB)
    if "MBps_median" in res["bulk"]:
        b = res["bulk"]
        progress(
            f"  {path.name}: one stream {b['MBps_median']:.0f} MB/s "
            f"({b['transfers']} x {b['bytes_per_transfer'] // MiB} MiB)"
        )
    cpu = CpuMeter(path)
    res["rtt"] = guarded(
        f"{path.name} rtt",
        lambda: loadgen.summarize_ns(
            loadgen.measure_rtt(
                host, path.echo_port, plan.rtt_count, plan.rtt_warmup, plan.phase_limit_s
            )
        ),
    )
    cpu.attribute(res["rtt"], "rt", plan.rtt_count + plan.rtt_warmup)
    if "p50_us" in res["rtt"]:
        progress(f"  {path.name}: round trip p50 {res['rtt']['p50_us']:.0f} us")
    cpu = CpuMeter(path)
    res["connect"] = guarded(
        f"{path.name} connect",
        lambda: loadgen.summarize_ns(
            loadgen.measure_connect(
                host, path.echo_port, plan.connect_count, plan.connect_warmup, plan.phase_limit_s
            )
        ),
    )
    cpu.attribute(res["connect"], "conn", plan.connect_count + plan.connect_warmup)
    if "p50_us" in res["connect"]:
        progress(f"  {path.name}: connect + round trip p50 {res['connect']['p50_us']:.0f} us")
    return res


def run_path(
    name: str, setup: Callable[[], AbstractContextManager[paths.Path]], plan: Plan
) -> dict[str, Any]:
    progress(f"{name}: setting up")
    try:
        with setup() as path:
            return measure_path(path, plan)
    except paths.Unavailable as exc:
        progress(f"{name}: not available ({exc})")
        return {"status": "not available", "reason": str(exc), "short": name}
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        progress(f"{name}: failed ({exc})")
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "short": name}


def start_endpoints(procs: ProcessSet) -> paths.Endpoints:
    child = procs.start("endpoints", [sys.executable, BENCH_DIR / "endpoints.py"])
    line = child.wait_for_line("READY", 20)
    fields = dict(part.split("=") for part in line.split()[1:])
    return paths.Endpoints(int(fields["echo"]), int(fields["sink"]))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in FsPath("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": paths.openssh_version(),
        "packages": {p: ver(p) for p in ("uvloop", "websockets", "aiohttp", "asyncssh", "psutil")},
        "bench_commit": commit or "unknown",
    }


def raise_fd_limit() -> None:
    """1,000 idle connections need ~2,000 descriptors in some processes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _on_alarm(signum: int, frame: object) -> None:
    raise BenchTimeout("watchdog: the run took too long")


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter run (about a minute)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--qanat-bin",
        metavar="PATH",
        help="the qanat executable to benchmark (default: the one beside this Python)",
    )
    parser.add_argument(
        "--json", type=FsPath, default=REPO / ".bench" / "results.json", help="where to write"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {SECTIONS}")
    args.only = tuple(s for s in SECTIONS if s in only)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    raise_fd_limit()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGALRM, _on_alarm)

    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "sections": list(args.only),
        "machine": machine(),
        "plan": asdict(plan),
        "targets": [asdict(t) for t in report.TARGETS],
        "issue13_targets": [asdict(t) for t in report.ISSUE13],
        "paths": {},
    }
    if "qanat" in args.only:
        results["qanat_bin"] = args.qanat_bin or "the venv's qanat"
    procs = ProcessSet()
    workdir = FsPath(tempfile.mkdtemp(prefix="qanat-bench-"))
    wanted = [s for s in ("direct", "ssh", "qanat", "go") if s in args.only]
    signal.alarm(plan.watchdog_s)
    with HostLoad() as load:
        try:
            if wanted:
                endpoints = start_endpoints(procs)
                tls = paths.BenchTls.make(workdir)
                setups: dict[str, Callable[[], AbstractContextManager[paths.Path]]] = {
                    "direct": lambda: paths.direct(endpoints),
                    "ssh": lambda: paths.openssh(procs, endpoints, workdir),
                    "qanat": lambda: paths.qanat(procs, endpoints, workdir, tls, args.qanat_bin),
                    "go": lambda: paths.gopeer(procs, endpoints, workdir, tls),
                }
                for name in wanted:
                    results["paths"][name] = run_path(name, setups[name], plan)
                procs.stop_all()
            if "wslib" in args.only:
                progress("wslib: websockets (sans-IO) vs aiohttp")
                results["wslib"] = wslib.run(procs, plan.ws)
        except BenchTimeout as exc:
            results["aborted"] = str(exc)
            progress(f"aborted: {exc}")
            for name in wanted:
                results["paths"].setdefault(
                    name, {"status": "aborted", "reason": str(exc), "short": name}
                )
        finally:
            signal.alarm(0)
            procs.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
    results["host_load"] = load.result()
    results["duration_s"] = round(time.monotonic() - started, 1)

    results["issue13"] = report.evaluate(results["paths"])
    title = (
        f"qanat bench ({results['mode']}), loopback, {results['machine']['cores']} cores "
        f"{results['machine']['cpu']}, Python {results['machine']['python']}"
    )
    print(title)
    print("=" * len(title))
    table = report.render(results)
    if table:
        print(table)
    if "wslib" in results:
        print()
        print(wslib.render(results["wslib"]))
    print()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    others = results["host_load"]["others_percent_of_machine"]
    if any(n in results["paths"] for n in ("qanat", "ssh", "go")):
        # Just above the CPU share of other processes, which says how far
        # to trust these same-run comparisons.
        print(report.render_issue13(results["issue13"]))
    print(
        f"other processes on this machine used {others:.0f}% of its CPU during the run"
        + (
            f": over {NOISY_PERCENT}%, figures are lower than on a quiet machine"
            if others > NOISY_PERCENT
            else ""
        )
    )
    if "aborted" in results:
        print(f"ABORTED: {results['aborted']} (after {results['duration_s']:.0f} s)")
    print(f"results: {_display(args.json)} ({results['duration_s']:.0f} s)")
    return 1 if _failed(results) else 0


def _display(path: FsPath) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _failed(results: dict[str, Any]) -> bool:
    def walk() -> Iterator[dict[str, Any]]:
        for res in results["paths"].values():
            yield res
            yield from (v for v in res.values() if isinstance(v, dict))
        yield from results.get("wslib", {}).values()

    return "aborted" in results or any(r.get("status") == "failed" or "error" in r for r in walk())


if __name__ == "__main__":
    sys.exit(main())
