"""The endpoint catalogue and traffic of a stage.

Whoever runs the connectors (role ``operator``, or ``admin``) says what each
``secure-gateway:<port>`` of a stage is: protocol, whether the private side
speaks TLS (so apps use ``https://``), a description, an owner to contact,
and an OpenAPI document (uploaded, checked by :mod:`.openapidoc`) or a link
to one. App developers (``viewer``) read the catalogue merged with the live
connector table: which entries are served right now and by how many
connectors, and which served ports nobody described yet.

Rules for what is stored (each refusal is an :class:`InvalidInput` or
:class:`TooLarge`, and nothing is written):

- the port must lie in the stage's port range: a port outside it belongs to
  no connector of this stage (typically another stage's range);
- descriptions and owners are plain text: markup (``<tag``, ``&entity;``) is
  refused rather than escaped, so what the operator typed is what every
  client shows;
- an OpenAPI link is an ``http(s)`` URL without credentials.

Every change writes one audit entry (``endpoint.set``, ``endpoint.document``,
``endpoint.remove``) on the stage, in the same transaction.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from qanat.errors import InvalidInput, NotFound
from qanat.portal import openapidoc
from qanat.portal.access import Actor, ActorKind, require
from qanat.portal.context import PortalContext
from qanat.portal.views import (
    CatalogueEntry,
    OpenApiFile,
    StageCatalogue,
    StageTraffic,
    TrafficRow,
)
from qanat.store import (
    CatalogueRecord,
    ConnectorRecord,
    GatewayRecord,
    Role,
    StageRecord,
    TrafficRecord,
    Transaction,
)

DESCRIPTION_MAX_CHARS = 500
OWNER_MAX_CHARS = 200
URL_MAX_CHARS = 2000
TRAFFIC_WINDOW_MAX_MIN = 120
_MARKUP = re.compile(r"<\s*[A-Za-z!/?]|&#?[A-Za-z0-9]+;")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_KEEP = object()


class CatalogueOps(PortalContext):
    """The endpoint catalogue (operator writes, viewer reads) and traffic (viewer)."""

    @property
    def openapi_max_bytes(self) -> int:
        """The largest OpenAPI document an entry may hold."""
        return self._config.openapi_max_bytes

    # -- reading -------------------------------------------------------------

    def catalogue(self, actor: Actor, org: str, stage: str) -> StageCatalogue:
        """Entries of the stage merged with what is served right now (viewer)."""
        with self._store.transaction(write=False) as tx:
            stage_rec, gateway = self._stage_of(tx, actor, org, stage, Role.VIEWER)
            entries = tx.catalogue(stage_rec)
            connectors = tx.connectors([stage_rec.id])
        return StageCatalogue(self._stage_info(gateway), _merge(entries, connectors))

    def catalogue_entry(self, actor: Actor, org: str, stage: str, port: int) -> CatalogueEntry:
        """One endpoint of the stage, listed or only served (viewer).

        Raises:
            NotFound: neither described nor served.
        """
        found = [e for e in self.catalogue(actor, org, stage).entries if e.port == port]
        if not found:
            raise NotFound(
                f"stage {org}/{stage} has no endpoint secure-gateway:{port}: nobody described"
                " it and no connector serves it; list the stage's endpoints"
            )
        return found[0]

    def openapi_file(self, actor: Actor, org: str, stage: str, port: int) -> OpenApiFile:
        """The stored OpenAPI document of an endpoint, as uploaded (viewer).

        Raises:
            NotFound: no entry, or the entry has no uploaded document.
        """
        with self._store.transaction(write=False) as tx:
            stage_rec, _ = self._stage_of(tx, actor, org, stage, Role.VIEWER)
            entry = tx.catalogue_entry(stage_rec, port)
        if entry is None or entry.openapi_doc is None or entry.openapi_format is None:
            link = f" (it links to {entry.openapi_url})" if entry and entry.openapi_url else ""
            raise NotFound(
                f"secure-gateway:{port} of stage {stage_rec.key} has no uploaded OpenAPI"
                f" document{link}; an operator can upload one"
            )
        return OpenApiFile(port, entry.openapi_format, entry.openapi_doc)

    def openapi_summary(
        self, actor: Actor, org: str, stage: str, port: int
    ) -> openapidoc.ApiSummary:
        """The stored document's operations, for the ``openapi`` view (viewer)."""
        return openapidoc.summarize(self.openapi_file(actor, org, stage, port).text)

    # -- writing -------------------------------------------------------------

    def set_endpoint(
        self,
        actor: Actor,
        source: str,
        org: str,
        stage: str,
        port: int,
        *,
        description: str,
        owner: str = "",
        protocol: str = "tcp",
        tls: bool = False,
        openapi_url: str | None = None,
        openapi_document: bytes | str | object | None = _KEEP,
    ) -> CatalogueEntry:
        """Create or replace the entry of ``secure-gateway:<port>`` (operator).

        ``openapi_document``: leave it out to keep the stored document, None to
        remove it, bytes or text to replace it.

        Raises:
            InvalidInput: a value is malformed, or the port is outside the
                stage's port range.
            TooLarge: the document is over ``openapi_max_bytes``.
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        text_description = plain_text(description, "description", DESCRIPTION_MAX_CHARS)
        if not text_description:
            raise InvalidInput(
                f"the description of secure-gateway:{port} is empty; say what the endpoint"
                " is, e.g. 'Orders API (REST)'"
            )
        text_owner = plain_text(owner, "owner", OWNER_MAX_CHARS)
        proto = _protocol(protocol)
        if tls and proto == "udp":
            raise InvalidInput(f"secure-gateway:{port} is UDP; TLS applies to TCP endpoints only")
        link = None if openapi_url is None or not openapi_url.strip() else _link(openapi_url)
        checked = None
        if isinstance(openapi_document, (bytes, str)):
            checked = self._check_document(openapi_document, port)
        now = self._clock()
        with self._store.transaction() as tx:
            stage_rec, gateway = self._stage_of(tx, actor, org, stage, Role.OPERATOR)
            _in_range(gateway, port)
            previous = tx.catalogue_entry(stage_rec, port)
            doc, fmt = (
                (None, None)
                if previous is None
                else (
                    previous.openapi_doc,
                    previous.openapi_format,
                )
            )
            if openapi_document is None:
                doc, fmt = None, None
            elif checked is not None:
                doc, fmt = checked.text, checked.format
            saved = tx.save_catalogue_entry(
                stage_rec,
                CatalogueRecord(
                    stage_key=stage_rec.key,
                    port=port,
                    protocol=proto,
                    tls=tls,
                    description=text_description,
                    owner=text_owner,
                    openapi_url=link,
                    openapi_doc=doc,
                    openapi_format=fmt,
                    updated_at=now,
                    updated_by=actor.label,
                ),
            )
            details: dict[str, Any] = {
                "port": port,
                "created": previous is None,
                "protocol": proto,
                "tls": tls,
                "description": text_description,
                "owner": text_owner,
                "openapi_url": link,
                "document": _doc_details(checked) if checked else ("kept" if doc else None),
            }
            self._audit(
                tx,
                actor,
                source,
                "endpoint.set",
                org=stage_rec.org_name,
                target=stage_rec.key,
                now=now,
                details=details,
            )
            connectors = tx.connectors([stage_rec.id])
        return _merge([saved], connectors)[0]

    def set_openapi_document(
        self, actor: Actor, source: str, org: str, stage: str, port: int, raw: bytes | str
    ) -> CatalogueEntry:
        """Replace the OpenAPI document of an existing entry (operator).

        Raises:
            NotFound: the port has no entry yet (describe it first).
            InvalidInput, TooLarge: see :func:`.openapidoc.check`.
        """
        checked = self._check_document(raw, port)
        now = self._clock()
        with self._store.transaction() as tx:
            stage_rec, _ = self._stage_of(tx, actor, org, stage, Role.OPERATOR)
            entry = tx.catalogue_entry(stage_rec, port)
            if entry is None:
                raise NotFound(
                    f"secure-gateway:{port} of stage {stage_rec.key} has no catalogue entry;"
                    " describe the endpoint first (PUT .../endpoints/{port}), then upload"
                    " its document"
                )
            saved = tx.save_catalogue_entry(
                stage_rec,
                CatalogueRecord(
                    **{
                        **_fields(entry),
                        "openapi_doc": checked.text,
                        "openapi_format": checked.format,
                        "updated_at": now,
                        "updated_by": actor.label,
                    }
                ),
            )
            self._audit(
                tx,
                actor,
                source,
                "endpoint.document",
                org=stage_rec.org_name,
                target=stage_rec.key,
                now=now,
                details={"port": port, "document": _doc_details(checked)},
            )
            connectors = tx.connectors([stage_rec.id])
        return _merge([saved], connectors)[0]

    def remove_endpoint(self, actor: Actor, source: str, org: str, stage: str, port: int) -> None:
        """Delete the entry of a port (operator); the port itself is untouched.

        Raises:
            NotFound: the port has no entry.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            stage_rec, _ = self._stage_of(tx, actor, org, stage, Role.OPERATOR)
            if not tx.delete_catalogue_entry(stage_rec, port):
                raise NotFound(
                    f"secure-gateway:{port} of stage {stage_rec.key} has no catalogue entry"
                )
            self._audit(
                tx,
                actor,
                source,
                "endpoint.remove",
                org=stage_rec.org_name,
                target=stage_rec.key,
                now=now,
                details={"port": port},
            )

    def declare_endpoint(
        self,
        source: str,
        stage_key: str,
        connector: str,
        port: int,
        description: str,
        openapi_document: str | None,
        *,
        protocol: str = "tcp",
    ) -> bool:
        """A connector's description of a port it serves (``qanat connect --describe``).

        It fills the catalogue but never overrides what a person wrote: an
        entry last written by a user or key is kept as it is. Re-sending the
        same description (every reconnect does) changes nothing and is not
        audited. Returns whether the entry was written.

        Raises:
            InvalidInput, TooLarge: the same rules as :meth:`set_endpoint`.
            NotFound: the stage no longer exists.
        """
        text = plain_text(description, "description", DESCRIPTION_MAX_CHARS)
        if not text:
            raise InvalidInput(f"the description of secure-gateway:{port} is empty")
        checked = self._check_document(openapi_document, port) if openapi_document else None
        actor = Actor(ActorKind.CONNECTOR, connector)
        now = self._clock()
        org_name, _, stage_name = stage_key.partition("/")
        with self._store.transaction() as tx:
            stage_rec = tx.stage(tx.org(org_name), stage_name)
            _in_range(tx.gateway(stage_rec), port)
            previous = tx.catalogue_entry(stage_rec, port)
            if previous is not None and not previous.updated_by.startswith("connector:"):
                return False
            doc = checked.text if checked else None
            fmt = checked.format if checked else None
            if previous is not None and (
                previous.description,
                previous.openapi_doc,
                previous.protocol,
            ) == (text, doc, protocol):
                return False
            tx.save_catalogue_entry(
                stage_rec,
                CatalogueRecord(
                    stage_key=stage_rec.key,
                    port=port,
                    protocol=protocol,
                    tls=previous.tls if previous else False,
                    description=text,
                    owner=previous.owner if previous else "",
                    openapi_url=previous.openapi_url if previous else None,
                    openapi_doc=doc,
                    openapi_format=fmt,
                    updated_at=now,
                    updated_by=actor.label,
                ),
            )
            self._audit(
                tx,
                actor,
                source,
                "endpoint.declare",
                org=stage_rec.org_name,
                target=stage_rec.key,
                now=now,
                details={
                    "port": port,
                    "description": text,
                    "document": _doc_details(checked) if checked else None,
                },
            )
        return True

    # -- traffic ---------------------------------------------------------------

    def traffic(self, actor: Actor, org: str, stage: str, *, minutes: int = 60) -> StageTraffic:
        """Connections, failures and bytes per endpoint and connector (viewer)."""
        minutes = max(1, min(minutes, TRAFFIC_WINDOW_MAX_MIN))
        now = self._clock()
        since = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        with self._store.transaction(write=False) as tx:
            stage_rec, _ = self._stage_of(tx, actor, org, stage, Role.VIEWER)
            rows = tx.traffic(stage_rec, since)
        return StageTraffic(
            stage_key=stage_rec.key,
            minutes=minutes,
            since=since,
            endpoints=_traffic_rows(rows, "endpoint", since, minutes),
            connectors=_traffic_rows(rows, "connector", since, minutes),
        )

    # -- helpers ---------------------------------------------------------------

    def _stage_of(
        self, tx: Transaction, actor: Actor, org: str, stage: str, need: Role
    ) -> tuple[StageRecord, GatewayRecord]:
        org_rec = require(tx, actor, org, need, self._clock())
        stage_rec = tx.stage(org_rec, stage)
        return stage_rec, tx.gateway(stage_rec)

    def _check_document(self, raw: bytes | str, port: int) -> openapidoc.CheckedDocument:
        return openapidoc.check(
            raw,
            max_bytes=self._config.openapi_max_bytes,
            what=f"the OpenAPI document of secure-gateway:{port}",
        )


def plain_text(text: str, what: str, max_chars: int) -> str:
    """Free text for people: trimmed, no markup, no control characters.

    Raises:
        InvalidInput: too long, or it contains markup or control characters.
    """
    value = text.strip()
    if len(value) > max_chars:
        raise InvalidInput(f"the {what} has {len(value)} characters; at most {max_chars}")
    markup = _MARKUP.search(value)
    if markup is not None:
        raise InvalidInput(
            f"the {what} contains HTML ({markup.group(0)!r}...); it is plain text, shown as"
            " typed: remove the markup (put rich documentation in the OpenAPI document)"
        )
    if _CONTROL.search(value):
        raise InvalidInput(f"the {what} contains control characters; use plain text")
    return value


def _protocol(text: str) -> str:
    value = text.strip().lower()
    if value not in ("tcp", "udp"):
        raise InvalidInput(f"protocol {text!r} is not tcp or udp")
    return value


def _link(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if (
        len(value) > URL_MAX_CHARS
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or _CONTROL.search(value)
        or " " in value
    ):
        raise InvalidInput(
            f"OpenAPI link {value[:80]!r} must be an http(s) URL without credentials,"
            f" at most {URL_MAX_CHARS} characters, e.g. https://api.example.com/openapi.json"
        )
    return value


def _in_range(gateway: GatewayRecord, port: int) -> None:
    s = gateway.settings
    if not s.port_min <= port <= s.port_max:
        raise InvalidInput(
            f"port {port} is outside the port range {s.port_min}-{s.port_max} of stage"
            f" {gateway.key}: no connector of this stage can serve it (it belongs to another"
            " stage's range); describe it on the stage whose connectors serve it"
        )


def _doc_details(checked: openapidoc.CheckedDocument) -> dict[str, Any]:
    return {
        "format": checked.format,
        "spec": checked.spec,
        "title": checked.title,
        "version": checked.version,
        "bytes": len(checked.text.encode()),
    }


def _fields(entry: CatalogueRecord) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in CatalogueRecord.__dataclass_fields__}


def _title(entry: CatalogueRecord) -> str:
    return "" if entry.openapi_doc is None else _document_title(entry.openapi_doc)


@functools.lru_cache(maxsize=256)
def _document_title(text: str) -> str:
    # Listings show every entry's title: parse each stored document once per
    # process, not on every page load (the text is the key; str caches its hash).
    try:
        summary = openapidoc.summarize(text)
    except InvalidInput:
        return ""
    return f"{summary.title} {summary.version}".strip()


def _merge(
    entries: list[CatalogueRecord], connectors: list[ConnectorRecord]
) -> tuple[CatalogueEntry, ...]:
    served: dict[int, list[str]] = defaultdict(list)
    targets: dict[int, list[str]] = defaultdict(list)
    protocols: dict[int, str] = {}
    for c in connectors:
        for e in c.endpoints:
            served[e.port].append(c.display_name)
            if e.target not in targets[e.port]:
                targets[e.port].append(e.target)
            protocols.setdefault(e.port, e.protocol)
    result = [
        CatalogueEntry(
            port=e.port,
            protocol=e.protocol,
            tls=e.tls,
            description=e.description,
            owner=e.owner,
            openapi_url=e.openapi_url,
            document=e.openapi_format if e.openapi_doc is not None else None,
            document_title=_title(e),
            listed=True,
            served_by=tuple(served.get(e.port, ())),
            targets=tuple(targets.get(e.port, ())),
            updated_at=e.updated_at,
            updated_by=e.updated_by,
        )
        for e in entries
    ]
    listed = {e.port for e in entries}
    for port in sorted(set(served) - listed):
        result.append(
            CatalogueEntry(
                port=port,
                protocol=protocols.get(port, "tcp"),
                tls=False,
                description="",
                owner="",
                openapi_url=None,
                document=None,
                document_title="",
                listed=False,
                served_by=tuple(served[port]),
                targets=tuple(targets[port]),
                updated_at=None,
                updated_by="",
            )
        )
    return tuple(sorted(result, key=lambda e: e.port))


def _traffic_rows(
    rows: list[TrafficRecord], kind: str, since: datetime, minutes: int
) -> tuple[TrafficRow, ...]:
    grouped: dict[str, list[TrafficRecord]] = defaultdict(list)
    for r in rows:
        if r.kind == kind:
            grouped[r.name].append(r)
    result = []
    for name, items in grouped.items():
        series = [0] * minutes
        for r in items:
            index = int((r.bucket_at - since).total_seconds() // 60)
            if 0 <= index < minutes:
                series[index] += r.connections
        details = sorted({r.detail for r in items if r.detail})
        result.append(
            TrafficRow(
                kind=kind,
                name=name,
                detail=", ".join(details),
                protocol=items[-1].protocol,
                connections=sum(r.connections for r in items),
                failures=sum(r.failures for r in items),
                bytes=sum(r.bytes for r in items),
                series=tuple(series),
            )
        )
    key = (lambda t: int(t.name) if t.name.isdigit() else 0) if kind == "endpoint" else None
    return tuple(sorted(result, key=key or (lambda t: t.name)))
