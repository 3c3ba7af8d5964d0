"""The audit log and the live connector table (a Transaction mixin).

The audit log is append-only: this module only inserts and reads it, and the
migration installs triggers that refuse UPDATE and DELETE for everyone else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from qanat.store.models import AuditEntry, Connector, Org, Stage
from qanat.store.records import AuditFilter, AuditRecord, ConnectorRecord, EndpointRecord


class ActivityQueries:
    """Audit entries and connectors reported by gateway nodes."""

    _session: Session

    # -- audit log -----------------------------------------------------------

    def append_audit(
        self,
        *,
        at: datetime,
        actor: str,
        action: str,
        org: str | None,
        target: str,
        source_address: str,
        details: Mapping[str, Any],
    ) -> AuditRecord:
        entry = AuditEntry(
            at=at,
            actor=actor,
            action=action,
            org=org,
            target=target,
            source_address=source_address,
            details=dict(details),
        )
        self._session.add(entry)
        self._session.flush()
        return _audit(entry)

    def audit_entries(
        self,
        org: str | None,
        *,
        limit: int,
        before_id: int | None = None,
        where: AuditFilter | None = None,
    ) -> list[AuditRecord]:
        """Newest first; ``org=None`` reads the entries of no organisation."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        query = query.where(AuditEntry.org.is_(None) if org is None else AuditEntry.org == org)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        if where is not None:
            if where.target:
                query = query.where(AuditEntry.target == where.target)
            if where.actor:
                query = query.where(
                    func.lower(AuditEntry.actor).contains(where.actor.lower(), autoescape=True)
                )
            if where.action:
                query = query.where(
                    or_(
                        AuditEntry.action == where.action,
                        AuditEntry.action.startswith(where.action + ".", autoescape=True),
                    )
                )
            if where.since is not None:
                query = query.where(AuditEntry.at >= where.since)
            if where.until is not None:
                query = query.where(AuditEntry.at < where.until)
        return [_audit(e) for e in self._session.scalars(query)]

    # -- connectors ----------------------------------------------------------

    def upsert_connector(
        self,
        stage_id: int,
        *,
        connector_id: str,
        node: str,
        version: str,
        source_address: str,
        connected_since: datetime,
        now: datetime,
        endpoints: Sequence[EndpointRecord],
        name: str = "",
    ) -> None:
        row = self._session.scalars(
            select(Connector).where(
                Connector.stage_id == stage_id, Connector.connector_id == connector_id
            )
        ).one_or_none()
        if row is None:
            row = Connector(stage_id=stage_id, connector_id=connector_id, last_rtt_ms=None)
            self._session.add(row)
        row.node = node
        row.name = name[:128]
        row.version = version
        row.source_address = source_address
        row.connected_since = connected_since
        row.last_seen_at = now
        row.endpoints = [
            {"port": e.port, "target": e.target, "protocol": e.protocol} for e in endpoints
        ]
        self._session.flush()

    def touch_connector(
        self, stage_id: int, connector_id: str, *, rtt_ms: float | None, now: datetime
    ) -> bool:
        row = self._session.scalars(
            select(Connector).where(
                Connector.stage_id == stage_id, Connector.connector_id == connector_id
            )
        ).one_or_none()
        if row is None:
            return False
        row.last_seen_at = now
        if rtt_ms is not None:
            row.last_rtt_ms = rtt_ms
        self._session.flush()
        return True

    def remove_connector(self, stage_id: int, connector_id: str) -> bool:
        result = self._session.execute(
            delete(Connector).where(
                Connector.stage_id == stage_id, Connector.connector_id == connector_id
            )
        )
        return bool(getattr(result, "rowcount", 0))

    def remove_node_connectors(self, node: str) -> int:
        result = self._session.execute(delete(Connector).where(Connector.node == node))
        return int(getattr(result, "rowcount", 0))

    def connectors(self, stage_ids: Sequence[int]) -> list[ConnectorRecord]:
        rows = self._session.execute(
            select(Connector, Stage.name, Org.name)
            .join(Stage, Connector.stage_id == Stage.id)
            .join(Org, Stage.org_id == Org.id)
            .where(Connector.stage_id.in_(list(stage_ids)))
            .order_by(Connector.connected_since, Connector.id)
        )
        return [
            ConnectorRecord(
                stage_key=f"{org_name}/{stage_name}",
                connector_id=c.connector_id,
                node=c.node,
                version=c.version,
                source_address=c.source_address,
                connected_since=c.connected_since,
                last_seen_at=c.last_seen_at,
                last_rtt_ms=c.last_rtt_ms,
                endpoints=tuple(
                    EndpointRecord(int(e["port"]), str(e["target"]), str(e.get("protocol", "tcp")))
                    for e in c.endpoints
                ),
                name=c.name,
            )
            for c, stage_name, org_name in rows
        ]


def _audit(entry: AuditEntry) -> AuditRecord:
    return AuditRecord(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        org=entry.org,
        target=entry.target,
        source_address=entry.source_address,
        details=dict(entry.details),
    )
