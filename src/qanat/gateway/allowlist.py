"""Which sources may use a stage's endpoints: one value, parsed once.

A stage's ``allow`` CIDRs become one :class:`Allowlist` when the stage is
loaded or changed; TCP and UDP endpoints (and the ``/metrics`` gate) ask it
``allows(address)``. IPv4-mapped IPv6 sources (``::ffff:10.0.0.5``, what a
dual-stack socket reports) are checked as the IPv4 address they carry.
"""

from __future__ import annotations

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
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks) or "nowhere"
