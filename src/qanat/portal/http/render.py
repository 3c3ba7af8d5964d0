"""The portal's results as JSON: one function per view, stable keys.

These shapes are the API's contract (and the OpenAPI document's schemas):
keys are only ever added, never renamed or removed. Times are ISO 8601 UTC.
Tokens and keys appear only where an operation issues them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qanat.portal.views import (
    ApiKeyInfo,
    CatalogueEntry,
    EndpointStatus,
    GatewayStatus,
    OrgInfo,
    StageInfo,
    StageTraffic,
    TrafficRow,
    UserInfo,
)
from qanat.store import AuditRecord, ConnectorRecord, MembershipRecord


def when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def org(info: OrgInfo, role: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": info.name,
        "created_at": when(info.created_at),
        "stages": list(info.stages),
    }
    if role is not None:
        doc["role"] = role
    return doc


def stage(info: StageInfo) -> dict[str, Any]:
    s = info.settings
    return {
        "org": info.org,
        "name": info.name,
        "status": info.state.value,
        "address": info.address,
        "activated_at": when(info.activated_at),
        "token_issued_at": when(info.token_issued_at),
        "renewed_tokens": info.renewed_tokens,
        "bind_host": s.bind_host,
        "ports": f"{s.port_min}-{s.port_max}",
        "allow_cidrs": list(s.allow_cidrs),
        "updated_at": when(info.updated_at),
    }


def connector(record: ConnectorRecord) -> dict[str, Any]:
    return {
        "id": record.connector_id,
        "name": record.display_name,
        "version": record.version,
        "source_address": record.source_address,
        "connected_since": when(record.connected_since),
        "last_seen_at": when(record.last_seen_at),
        "keepalive_rtt_ms": record.last_rtt_ms,
        "node": record.node,
        "endpoints": [
            {
                "name": f"secure-gateway:{e.port}",
                "port": e.port,
                "target": e.target,
                "protocol": e.protocol,
            }
            for e in record.endpoints
        ],
    }


def endpoint(info: EndpointStatus) -> dict[str, Any]:
    return {
        "name": info.name,
        "port": info.port,
        "connectors": list(info.connectors),
        "targets": list(info.targets),
    }


def status(info: GatewayStatus) -> dict[str, Any]:
    return {
        "stage": stage(info.stage),
        "status": info.stage.state.value,
        "address": info.stage.address,
        "connectors": [connector(c) for c in info.connectors],
        "endpoints": [endpoint(e) for e in info.endpoints],
    }


def audit(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": when(record.at),
        "actor": record.actor,
        "action": record.action,
        "org": record.org,
        "target": record.target,
        "source_address": record.source_address,
        "details": dict(record.details),
    }


def member(record: MembershipRecord) -> dict[str, Any]:
    return {"username": record.username, "org": record.org_name, "role": record.role.value}


def user(info: UserInfo) -> dict[str, Any]:
    return {
        "username": info.username,
        "created_at": when(info.created_at),
        "roles": [member(m) for m in info.memberships],
    }


def api_key(info: ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": info.display,
        "org": info.org,
        "name": info.name,
        "role": info.role.value,
        "created_by": info.created_by,
        "created_at": when(info.created_at),
        "expires_at": when(info.expires_at),
        "revoked_at": when(info.revoked_at),
        "state": info.state.value,
    }


def catalogue_entry(info: CatalogueEntry, document_url: str | None = None) -> dict[str, Any]:
    return {
        "name": info.name,
        "port": info.port,
        "protocol": info.protocol,
        "tls": info.tls,
        "base_url": info.base_url,
        "description": info.description,
        "owner": info.owner,
        "openapi_url": info.openapi_url,
        "openapi_document": None
        if info.document is None
        else {"format": info.document, "title": info.document_title, "download": document_url},
        "listed": info.listed,
        "served": bool(info.served_by),
        "served_by": list(info.served_by),
        "connectors": len(info.served_by),
        "targets": list(info.targets),
        "updated_at": when(info.updated_at),
        "updated_by": info.updated_by,
    }


def traffic_row(row: TrafficRow) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "protocol": row.protocol,
        "connections": row.connections,
        "failures": row.failures,
        "bytes": row.bytes,
        "per_minute": list(row.series),
    }
    if row.kind == "endpoint":
        doc = {"name": f"secure-gateway:{row.name}", "port": int(row.name)} | doc
    else:
        doc = {"connector": row.name, "sessions": row.detail} | doc
    return doc


def traffic(info: StageTraffic) -> dict[str, Any]:
    return {
        "stage": info.stage_key,
        "minutes": info.minutes,
        "since": when(info.since),
        "endpoints": [traffic_row(r) for r in info.endpoints],
        "connectors": [traffic_row(r) for r in info.connectors],
    }
