"""Network namespaces, veth links and an nftables firewall for the test bed.

Everything here is created by the tests and removed by them: namespace names
start with ``qn<pid>-`` (the pid of the pytest process), so a run can tell
its own namespaces from those of a crashed earlier run and sweep the latter.
Addresses come from 10.77.0.0/16 and exist only inside these namespaces; the
hub namespace has no default route, so no packet can leave the bed.

Topology (see docs/deployment.md for the picture)::

    private 10.77.0.2 ---- 10.77.0.1 cloud-gw 10.77.1.1 ---- 10.77.1.2 app-dev
                                     cloud-gw 10.77.2.1 ---- 10.77.2.2 app-prod
                                     cloud-gw 10.77.3.1 ---- 10.77.3.2 other

cloud-gw forwards between its links, so every namespace can route to every
other: isolation comes from the gateway's allowlists and private's firewall,
not from missing routes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX_RE = re.compile(r"^qn(\d+)-")
NETNS_ETC = Path("/etc/netns")


def run(*args: str, input_text: str | None = None) -> str:
    """Run a command, raise with its stderr when it fails."""
    done = subprocess.run(
        list(args), input=input_text, capture_output=True, text=True, timeout=20, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def remove_namespace(name: str) -> None:
    """Kill what still runs inside ``name`` (processes of this bed), then delete it."""
    with contextlib.suppress(RuntimeError):
        for pid in run("ip", "netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(RuntimeError):
        run("ip", "netns", "delete", name)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Remove namespaces left by earlier runs whose pytest process is gone."""
    swept = []
    for name in list_namespaces():
        match = PREFIX_RE.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            remove_namespace(name)
            swept.append(name)
    return swept


@dataclass
class Topology:
    """The namespaces of one run; :meth:`close` removes them all."""

    prefix: str = field(default_factory=lambda: f"qn{os.getpid()}-")
    created: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return self.prefix + role

    def add(self, role: str, hosts: str | None = None) -> str:
        name = self.ns(role)
        run("ip", "netns", "add", name)
        self.created.append(name)
        self.exec(role, "ip", "link", "set", "lo", "up")
        if hosts is not None:
            self.write_hosts(role, hosts)
        return name

    def write_hosts(self, role: str, text: str) -> None:
        """/etc/hosts as seen by programs started with ``ip netns exec``."""
        folder = NETNS_ETC / self.ns(role)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text(text)

    def exec(self, role: str, *args: str, input_text: str | None = None) -> str:
        return run("ip", "netns", "exec", self.ns(role), *args, input_text=input_text)

    def link(self, hub: str, hub_if: str, hub_cidr: str, leaf: str, leaf_cidr: str) -> None:
        """A veth pair hub<->leaf, addressed, up, leaf's default route via the hub."""
        run(
            "ip", "link", "add", hub_if, "netns", self.ns(hub), "type", "veth",
            "peer", "name", "eth0", "netns", self.ns(leaf),
        )  # fmt: skip
        self.exec(hub, "ip", "addr", "add", hub_cidr, "dev", hub_if)
        self.exec(hub, "ip", "link", "set", hub_if, "up")
        self.exec(leaf, "ip", "addr", "add", leaf_cidr, "dev", "eth0")
        self.exec(leaf, "ip", "link", "set", "eth0", "up")
        self.exec(leaf, "ip", "route", "add", "default", "via", hub_cidr.split("/")[0])

    def close(self) -> None:
        for name in reversed(self.created):
            remove_namespace(name)
        self.created.clear()


def outbound_only_firewall(gateway_ip: str, gateway_port: int) -> str:
    """nftables rules: new connections only out to the gateway; nothing in.

    Loopback is free (the connector dials the endpoints on 127.0.0.1), replies
    to connections we opened come back as established/related, everything
    else is dropped silently (no RST or ICMP that would tell a scanner much).
    """
    return f"""
table inet qanat_bed {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
    }}
    chain output {{
        type filter hook output priority filter; policy drop;
        oif "lo" accept
        ct state established,related accept
        ip daddr {gateway_ip} tcp dport {gateway_port} ct state new accept
    }}
}}
"""


@dataclass
class Processes:
    """Processes started in namespaces; :meth:`close` stops them by process group."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    files: list[IO[bytes]] = field(default_factory=list)

    def start(self, topo: Topology, role: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.ns(role), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, needle: str, timeout_s: float, since: int = 0) -> str:
        """Wait (bounded, polling) until ``needle`` is in the log of ``name``.

        Only the log from character ``since`` on is searched, so a test can
        wait for a line of its own rather than an earlier test's.
        """
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            text = self.log(name)
            if needle in text[since:]:
                return text
            proc = self.procs[name]
            if proc.poll() is not None:
                text = self.log(name)
                if needle in text[since:]:
                    return text
                raise AssertionError(
                    f"{name} exited ({proc.returncode}) before {needle!r}:\n{text}"
                )
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log of {name} within {timeout_s}s:\n{text}")

    def close(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for handle in self.files:
            handle.close()
        self.files.clear()
