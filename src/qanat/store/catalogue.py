"""The endpoint catalogue and the traffic buckets (a Transaction mixin)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from qanat.store.models import EndpointEntry, Org, Stage, TrafficBucket
from qanat.store.records import CatalogueRecord, StageRecord, TrafficRecord, TrafficSample


class CatalogueQueries:
    """Catalogue entries per stage and per-minute traffic."""

    _session: Session

    # -- catalogue -----------------------------------------------------------

    def catalogue(self, stage: StageRecord) -> list[CatalogueRecord]:
        rows = self._session.scalars(
            select(EndpointEntry)
            .where(EndpointEntry.stage_id == stage.id)
            .order_by(EndpointEntry.port)
        )
        return [_entry(e, stage.key) for e in rows]

    def catalogue_entry(self, stage: StageRecord, port: int) -> CatalogueRecord | None:
        row = self._find_entry(stage.id, port)
        return None if row is None else _entry(row, stage.key)

    def save_catalogue_entry(self, stage: StageRecord, entry: CatalogueRecord) -> CatalogueRecord:
        """Create or replace the entry of ``entry.port``."""
        row = self._find_entry(stage.id, entry.port)
        if row is None:
            row = EndpointEntry(stage_id=stage.id, port=entry.port)
            self._session.add(row)
        row.protocol = entry.protocol
        row.tls = entry.tls
        row.description = entry.description
        row.owner = entry.owner
        row.openapi_url = entry.openapi_url
        row.openapi_doc = entry.openapi_doc
        row.openapi_format = entry.openapi_format
        row.updated_at = entry.updated_at
        row.updated_by = entry.updated_by
        self._session.flush()
        return _entry(row, stage.key)

    def delete_catalogue_entry(self, stage: StageRecord, port: int) -> bool:
        result = self._session.execute(
            delete(EndpointEntry).where(
                EndpointEntry.stage_id == stage.id, EndpointEntry.port == port
            )
        )
        return bool(getattr(result, "rowcount", 0))

    def _find_entry(self, stage_id: int, port: int) -> EndpointEntry | None:
        return self._session.scalars(
            select(EndpointEntry).where(
                EndpointEntry.stage_id == stage_id, EndpointEntry.port == port
            )
        ).one_or_none()

    # -- traffic -------------------------------------------------------------

    def add_traffic(
        self, samples: Sequence[TrafficSample], *, now: datetime, keep: timedelta
    ) -> int:
        """Add each sample to its stage's bucket of the current minute.

        Samples of stages that no longer exist are dropped; buckets older than
        ``keep`` are deleted. Returns how many samples were written.
        """
        bucket_at = now.replace(second=0, microsecond=0)
        stage_ids = self._stage_ids({s.stage_key for s in samples})
        written = 0
        for sample in samples:
            stage_id = stage_ids.get(sample.stage_key)
            if stage_id is None:
                continue
            row = self._session.scalars(
                select(TrafficBucket).where(
                    TrafficBucket.stage_id == stage_id,
                    TrafficBucket.bucket_at == bucket_at,
                    TrafficBucket.kind == sample.kind,
                    TrafficBucket.name == sample.name,
                )
            ).one_or_none()
            if row is None:
                row = TrafficBucket(
                    stage_id=stage_id,
                    bucket_at=bucket_at,
                    kind=sample.kind,
                    name=sample.name[:128],
                    connections=0,
                    failures=0,
                    bytes=0,
                )
                self._session.add(row)
            row.detail = sample.detail[:128]
            row.protocol = sample.protocol
            row.connections += sample.connections
            row.failures += sample.failures
            row.bytes += sample.bytes
            written += 1
        self._session.flush()
        self._session.execute(delete(TrafficBucket).where(TrafficBucket.bucket_at < now - keep))
        return written

    def traffic(self, stage: StageRecord, since: datetime) -> list[TrafficRecord]:
        rows = self._session.scalars(
            select(TrafficBucket)
            .where(TrafficBucket.stage_id == stage.id, TrafficBucket.bucket_at >= since)
            .order_by(TrafficBucket.bucket_at, TrafficBucket.kind, TrafficBucket.name)
        )
        return [
            TrafficRecord(
                bucket_at=r.bucket_at,
                kind=r.kind,
                name=r.name,
                detail=r.detail,
                protocol=r.protocol,
                connections=r.connections,
                failures=r.failures,
                bytes=r.bytes,
            )
            for r in rows
        ]

    def _stage_ids(self, keys: set[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for key in keys:
            org_name, _, stage_name = key.partition("/")
            stage_id = self._session.scalar(
                select(Stage.id)
                .join(Org, Stage.org_id == Org.id)
                .where(Org.name == org_name, Stage.name_key == stage_name.lower())
            )
            if stage_id is not None:
                found[key] = int(stage_id)
        return found


def _entry(row: EndpointEntry, stage_key: str) -> CatalogueRecord:
    return CatalogueRecord(
        stage_key=stage_key,
        port=row.port,
        protocol=row.protocol,
        tls=row.tls,
        description=row.description,
        owner=row.owner,
        openapi_url=row.openapi_url,
        openapi_doc=row.openapi_doc,
        openapi_format=row.openapi_format,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )
