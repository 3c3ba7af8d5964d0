"""The isolation rule between stages: no two stages share an (address, port).

Pure functions, used by the store (the portal refuses a stage whose bind
address and port range overlap another stage's, and allocates each new stage
an address of its own) and by the gateway (for configurations that overlap
anyway, e.g. a hand-written stage file or an old database: the stage listed
first owns the contested ports, whoever connects first).

Two bind addresses overlap when they are equal, or when one is a wildcard
(``0.0.0.0`` for IPv4, ``::`` for both families on Linux' default dual
stack) that would receive the other's connections.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Binding:
    """Where one stage's endpoint ports listen."""

    key: str
    bind_host: str
    port_min: int
    port_max: int


def hosts_overlap(a: str, b: str) -> bool:
    """Would a listener on ``a`` and one on ``b`` (same port) share connections?"""
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return a == b
    if ia == ib:
        return True
    for wild, other in ((ia, ib), (ib, ia)):
        if wild.is_unspecified and (wild.version == other.version or wild.version == 6):
            return True
    return False


def overlaps(a: Binding, b: Binding) -> bool:
    """Do the two stages' (address, port range) intersect?"""
    return (
        hosts_overlap(a.bind_host, b.bind_host)
        and a.port_min <= b.port_max
        and b.port_min <= a.port_max
    )


def first_overlap(candidate: Binding, others: Iterable[Binding]) -> Binding | None:
    """The first of ``others`` (not ``candidate`` itself) that overlaps it."""
    for other in others:
        if other.key != candidate.key and overlaps(candidate, other):
            return other
    return None


def owner(stages: Iterable[Binding], bind_host: str, port: int) -> Binding | None:
    """The stage that owns ``port`` on ``bind_host``: the first listed whose
    address overlaps and whose range holds the port."""
    for stage in stages:
        if stage.port_min <= port <= stage.port_max and hosts_overlap(stage.bind_host, bind_host):
            return stage
    return None


def free_address(pool: str, used: Iterable[str], *, limit: int = 1 << 20) -> str | None:
    """The first host address of ``pool`` not in ``used`` (nor overlapping a
    wildcard in it), or None when the pool has none left."""
    network = ipaddress.ip_network(pool, strict=False)
    taken = list(used)
    hosts: Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]
    hosts = iter(network.hosts()) if network.num_addresses > 1 else iter([network.network_address])
    for count, host in enumerate(hosts):
        if count >= limit:
            return None
        text = str(host)
        if not any(hosts_overlap(text, t) for t in taken):
            return text
    return None


def contested(
    stages: Iterable[Binding], stage: Binding, ports: Iterable[int]
) -> tuple[int, Binding] | None:
    """The first of ``ports`` that ``stage`` may not bind because a stage
    listed before it owns that port on an overlapping address."""
    earlier: list[Binding] = []
    for other in stages:
        if other.key == stage.key:
            break
        if hosts_overlap(other.bind_host, stage.bind_host):
            earlier.append(other)
    for port in ports:
        found = owner(earlier, stage.bind_host, port)
        if found is not None:
            return port, found
    return None


def contested_text(port: int, bind_host: str, proto: str = "") -> str:
    """The ``config`` refusal for a contested port (names the fix, not the owner)."""
    return (
        f"{proto}port {port} is reserved by another stage on {bind_host} (its address and"
        " port range overlap this stage's, and the stage configured first owns the port,"
        " whoever connects first); ask the operator to give each stage its own bind address"
    )
