"""The portal's settings, parsed once at the edge into a frozen object."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from qanat.errors import ConfigError
from qanat.store import PrivateGatewaySettings

DEFAULT_STAGES = ("Development", "Test", "Production")
# On one machine every 127.x.y.z is a loopback address of its own (Linux).
DEFAULT_BIND_POOL = "127.0.0.0/8"


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """How the portal names addresses and sets up new stages.

    Attributes:
        public_base_url: where connectors reach the gateways, e.g.
            ``https://gw.example.com``; a stage's address is
            ``<public_base_url>/sg_<uuid>``. Addresses are computed from it
            when read, so changing it moves every address with it.
        stage_defaults: ports and allowed app networks given to the gateway
            of every new stage (its ``bind_host`` is not used: see bind_pool).
        bind_pool: the network (CIDR, or one address) new stages' bind
            addresses come from: each stage gets the first address no other
            stage uses, so no two stages ever share an (address, port).
        default_stages: stages every new organisation starts with.
        audit_page_max: most audit entries returned by one call.
        openapi_max_bytes: largest OpenAPI document a catalogue entry may hold.

    Raises:
        ConfigError: the base URL is not an http(s) URL without query.
    """

    public_base_url: str
    stage_defaults: PrivateGatewaySettings = field(default_factory=PrivateGatewaySettings)
    bind_pool: str = DEFAULT_BIND_POOL
    default_stages: tuple[str, ...] = DEFAULT_STAGES
    audit_page_max: int = 500
    openapi_max_bytes: int = 512 * 1024

    def __post_init__(self) -> None:
        parts = urlsplit(self.public_base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(
                f"public base URL {self.public_base_url!r} must look like"
                " https://gw.example.com (the address connectors dial)"
            )
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(
                f"public base URL {self.public_base_url!r} must not carry credentials,"
                " a query or a fragment"
            )
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        try:
            pool = ipaddress.ip_network(self.bind_pool, strict=False)
        except ValueError:
            raise ConfigError(
                f"bind address pool {self.bind_pool!r} is not an address or a network;"
                " use e.g. 127.0.0.0/8 or 10.20.0.0/16"
            ) from None
        object.__setattr__(self, "bind_pool", str(pool))

    def address(self, address_id: str) -> str:
        """The full address connectors use for ``address_id``."""
        return f"{self.public_base_url}/{address_id}"
