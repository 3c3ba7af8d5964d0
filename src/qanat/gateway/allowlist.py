"""Which sources may use a stage's endpoints: one value, parsed once.

A stage's ``allow`` CIDRs become one :class:`Allowlist` when the stage is
loaded or changed; TCP and UDP endpoints (and the ``/metrics`` gate) ask it
``allows(address)``. IPv4-mapped IPv6 sources (``::ffff:10.0.0.5``, what a
dual-stack socket reports) are checked as the IPv4 address they carry.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Allowlist:
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> Allowlist:
        """Raises: ValueError: a CIDR is not one (stage loading checked them before)."""
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def allows(self, address: str) -> bool:
        ip = _source_ip(address)
        return ip is not None and any(ip in net for net in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks) or "nowhere"


@functools.lru_cache(maxsize=4096)
def _source_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A source address as checked (IPv4-mapped IPv6 as IPv4), None if not one.

    Asked once per app connection; apps connect from few addresses, and
    parsing one with ``ipaddress`` cost about as much as the rest of the
    admission (profiled), so the last few thousand are remembered.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
