"""What every portal operation shares: its dependencies and the audit helper."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from qanat.portal import names
from qanat.portal.access import Actor
from qanat.portal.config import PortalConfig
from qanat.portal.passwords import PasswordHasher
from qanat.portal.views import StageInfo
from qanat.store import GatewayRecord, Store, Transaction, utc_now


class PortalContext:
    """Dependencies of the operations, shared by the mixins of ``Portal``.

    Args:
        store: the database.
        config: base URL and defaults.
        hasher: password KDF (tests pass a cheap one).
        clock: returns the current aware UTC time.
    """

    def __init__(
        self,
        store: Store,
        config: PortalConfig,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._config = config
        self._hasher = hasher or PasswordHasher()
        self._clock = clock

    def _audit(
        self,
        tx: Transaction,
        actor: Actor,
        source: str,
        action: str,
        *,
        org: str | None,
        target: str,
        now: datetime,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        tx.append_audit(
            at=now,
            actor=actor.label,
            action=action,
            org=org,
            target=target,
            source_address=names.source_address(source),
            details=details or {},
        )

    def _stage_info(self, gateway: GatewayRecord) -> StageInfo:
        return StageInfo(
            org=gateway.org_name,
            name=gateway.stage_name,
            state=gateway.state,
            address=self._config.address(gateway.address_id) if gateway.address_id else None,
            activated_at=gateway.activated_at,
            token_issued_at=gateway.token_issued_at,
            renewed_tokens=len(gateway.renewed_hashes),
            settings=gateway.settings,
            updated_at=gateway.updated_at,
        )
