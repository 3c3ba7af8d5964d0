"""The client's address behind trusted reverse proxies (``--trusted-proxy``).

``X-Forwarded-For`` is honoured only when the TCP peer is one of the
trusted proxies; then the client is the right-most address of the header
that is not itself a trusted proxy (each proxy appends the address it saw,
so anything to the left of that was written by the client and proves
nothing). Without trusted proxies, or from any other peer, the header is
ignored and the TCP peer is the source. Pure; used for the token limiter,
the logs and the ``/metrics`` source check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxy networks.

    Raises:
        ValueError: naming the entry that is not a CIDR.
    """
    nets = []
    for cidr in cidrs:
        try:
            nets.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {cidr!r} is not an address or CIDR") from None
    return tuple(nets)


def _inside(address: str, nets: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The source to account ``peer``'s request to (see the module docstring)."""
    if not trusted or not forwarded_for or not _inside(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",")]
    for hop in reversed(hops):
        if hop.startswith("[") and "]" in hop:  # [v6]:port
            hop = hop[1 : hop.index("]")]
        elif hop.count(":") == 1:  # v4:port
            hop = hop.split(":", 1)[0]
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: trust nothing of it
        if not _inside(hop, trusted):
            return hop
    return peer
