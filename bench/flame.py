"""Flame graphs of qanat's gateway and connector during round trips or connects.

    .venv/bin/python bench/flame.py --out docs/flame [--qanat-bin PATH] [--seconds 8]
        [--phase rtt|connect]

Starts the bench endpoints and a qanat tunnel (as ``make bench`` does, over
TLS on loopback), runs round trips through the echo for ``--seconds``, and
records both processes with py-spy (``pip install py-spy`` in the venv) into
``<out>-gateway.svg`` and ``<out>-connector.svg``. Bounded in time; every
child is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path as FsPath

import loadgen
import paths
from procs import ProcessSet
from run import start_endpoints


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="prefix of the two SVG files")
    parser.add_argument("--qanat-bin", default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--phase",
        choices=("rtt", "connect"),
        default="rtt",
        help="the load: 64-byte round trips on one connection, or connect + first round trip",
    )
    parser.add_argument(
        "--format",
        default="flamegraph",
        help="py-spy format (flamegraph, raw; none: no recording, for A/B runs)",
    )
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(FsPath(sys.executable).with_name("py-spy"))
    if not FsPath(spy).exists():
        print("needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    procs = ProcessSet()
    workdir = FsPath(tempfile.mkdtemp(prefix="qanat-flame-"))
    try:
        endpoints = start_endpoints(procs)
        tls = paths.BenchTls.make(workdir)
        with paths.qanat(procs, endpoints, workdir, tls, args.qanat_bin) as path:
            assert path.server is not None
            assert path.client is not None
            recorders = [
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(child.popen.pid),
                        "--duration",
                        str(int(args.seconds)),
                        "--rate",
                        "500",
                        "--nonblocking",
                        "--format",
                        args.format,
                        "--output",
                        f"{args.out}-{role}.{args.format.replace('flamegraph', 'svg')}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for role, child in (("gateway", path.server), ("connector", path.client))
                if args.format != "none"
            ]
            time.sleep(0.5)  # let py-spy attach before the measured loop starts
            try:
                measure = loadgen.measure_rtt if args.phase == "rtt" else loadgen.measure_connect
                samples = measure(
                    path.host, path.echo_port, count=10**6, warmup=100, limit_s=args.seconds
                )
            except loadgen.PhaseTimeout as exc:  # the expected end: time is up
                samples = [0] * int(str(exc).split()[1])
            for rec in recorders:
                rec.wait(timeout=args.seconds + 30)
            print(f"{len(samples)} {args.phase} samples in {args.seconds:g}s: {args.out}-*")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
