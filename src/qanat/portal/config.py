"""The portal's settings, parsed once at the edge into a frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from qanat.errors import ConfigError
from qanat.store import PrivateGatewaySettings

DEFAULT_STAGES = ("Development", "Test", "Production")


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """How the portal names addresses and sets up new stages.

    Attributes:
        public_base_url: where connectors reach the gateways, e.g.
            ``https://gw.example.com``; a stage's address is
            ``<public_base_url>/sg_<uuid>``. Addresses are computed from it
            when read, so changing it moves every address with it.
        stage_defaults: bind address, ports and allowed app networks given
            to the gateway of every new stage.
        default_stages: stages every new organisation starts with.
        audit_page_max: most audit entries returned by one call.
        openapi_max_bytes: largest OpenAPI document a catalogue entry may hold.

    Raises:
        ConfigError: the base URL is not an http(s) URL without query.
    """

    public_base_url: str
    stage_defaults: PrivateGatewaySettings = field(default_factory=PrivateGatewaySettings)
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

    def address(self, address_id: str) -> str:
        """The full address connectors use for ``address_id``."""
        return f"{self.public_base_url}/{address_id}"
