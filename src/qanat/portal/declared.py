"""Connectors' own endpoint descriptions, from the gateway into the catalogue.

``qanat connect --describe 8081="Orders API" --openapi 8081=orders.yaml``
sends ``describe@qanat`` requests (see :mod:`qanat.wire.describe`) on its
tunnel; the gateway assembles them and calls the sink made here, which runs
:meth:`~qanat.portal.catalogue.CatalogueOps.declare_endpoint` in a worker
thread (the event loop carries the tunnels). What the portal refuses goes
back to the connector as the request's failure text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from qanat.errors import PortalError, StoreError
from qanat.portal.service import Portal
from qanat.wire.describe import Declaration

Sink = Callable[[str, str, Declaration, str], Awaitable[str | None]]


def catalogue_sink(portal: Portal) -> Sink:
    """The gateway's ``describe_sink`` for a portal in the same process."""

    async def sink(
        stage_key: str, connector: str, declaration: Declaration, protocol: str
    ) -> str | None:
        try:
            await asyncio.to_thread(
                portal.declare_endpoint,
                "tunnel",
                stage_key,
                connector,
                declaration.port,
                declaration.description,
                declaration.openapi,
                protocol=protocol,
            )
        except (PortalError, StoreError) as exc:
            return str(exc)
        return None

    return sink
