"""Queries on organisations, stages and their gateways (a Transaction mixin)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from qanat.errors import Conflict, NotFound
from qanat.isolation import Binding, first_overlap, free_address
from qanat.store.models import Gateway, Org, RenewedToken, Stage
from qanat.store.records import (
    GatewayRecord,
    GatewayState,
    OrgRecord,
    PrivateGatewaySettings,
    StageRecord,
)


class TenancyQueries:
    """Organisations, stages and gateways. Mixed into ``Transaction``."""

    _session: Session
    _stages_changed: bool
    _changed_stages: set[str]

    # -- organisations -------------------------------------------------------

    def add_org(self, name: str, now: datetime) -> OrgRecord:
        """Create an organisation (no stages yet).

        Raises:
            Conflict: an organisation with that name exists.
        """
        if self.find_org(name) is not None:
            raise Conflict(f"organisation {name!r} already exists; choose another name")
        org = Org(name=name, created_at=now)
        self._session.add(org)
        self._session.flush()
        return _org(org)

    def find_org(self, name: str) -> OrgRecord | None:
        org = self._session.scalars(select(Org).where(Org.name == name)).one_or_none()
        return None if org is None else _org(org)

    def org(self, name: str) -> OrgRecord:
        """The organisation called ``name``.

        Raises:
            NotFound: naming it.
        """
        found = self.find_org(name)
        if found is None:
            raise NotFound(f"organisation {name!r} does not exist; check the name")
        return found

    def list_orgs(self, ids: Iterable[int] | None = None) -> list[OrgRecord]:
        query = select(Org).order_by(Org.name)
        if ids is not None:
            query = query.where(Org.id.in_(list(ids)))
        return [_org(o) for o in self._session.scalars(query)]

    # -- stages --------------------------------------------------------------

    def add_stage(
        self,
        org: OrgRecord,
        name: str,
        settings: PrivateGatewaySettings,
        now: datetime,
        *,
        bind_pool: str | None = None,
    ) -> StageRecord:
        """Create a stage and its (inactive) gateway.

        With ``bind_pool`` the gateway's bind address is the first address of
        that network no other stage uses; otherwise ``settings.bind_host``.

        Raises:
            Conflict: the organisation has a stage of that name (any case), the
                pool has no free address, or the (address, port range)
                overlaps another stage's.
        """
        existing = self.find_stage(org, name)
        if existing is not None:
            raise Conflict(
                f"organisation {org.name!r} already has a stage named {existing.name!r};"
                " stage names are unique per organisation (ignoring case): choose another"
            )
        key = f"{org.name}/{name}"
        if bind_pool is not None:
            host = free_address(bind_pool, (b.bind_host for b in self._bindings()))
            if host is None:
                raise Conflict(
                    f"no free bind address left in {bind_pool} for stage {key!r}: every"
                    " address there belongs to another stage; give the installation a larger"
                    " network (qanat up --endpoint-bind CIDR)"
                )
            settings = replace(settings, bind_host=host)
        self._refuse_overlap(key, settings, exclude=None)
        stage = Stage(org_id=org.id, name=name, name_key=_name_key(name), created_at=now)
        self._session.add(stage)
        self._session.flush()
        self._session.add(
            Gateway(
                stage_id=stage.id,
                state=GatewayState.INACTIVE.value,
                bind_host=settings.bind_host,
                port_min=settings.port_min,
                port_max=settings.port_max,
                allow_cidrs=list(settings.allow_cidrs),
                updated_at=now,
            )
        )
        self._session.flush()
        return StageRecord(stage.id, org.id, org.name, stage.name, stage.created_at)

    def find_stage(self, org: OrgRecord, name: str) -> StageRecord | None:
        stage = self._session.scalars(
            select(Stage).where(Stage.org_id == org.id, Stage.name_key == _name_key(name))
        ).one_or_none()
        if stage is None:
            return None
        return StageRecord(stage.id, org.id, org.name, stage.name, stage.created_at)

    def stage(self, org: OrgRecord, name: str) -> StageRecord:
        """The stage ``name`` (any case) of ``org``.

        Raises:
            NotFound: naming the stage and the organisation.
        """
        found = self.find_stage(org, name)
        if found is None:
            raise NotFound(
                f"organisation {org.name!r} has no stage {name!r}; list its stages to see"
                " which exist"
            )
        return found

    def list_stages(self, org: OrgRecord) -> list[StageRecord]:
        stages = self._session.scalars(
            select(Stage).where(Stage.org_id == org.id).order_by(Stage.id)
        )
        return [StageRecord(s.id, org.id, org.name, s.name, s.created_at) for s in stages]

    # -- gateways ------------------------------------------------------------

    def gateway(self, stage: StageRecord, *, for_update: bool = False) -> GatewayRecord:
        """The gateway of ``stage``; ``for_update`` locks its row (PostgreSQL)."""
        query = _gateway_query().where(Gateway.stage_id == stage.id)
        if for_update:
            query = query.with_for_update(of=Gateway)
        return self._gateway_records(query)[0]

    def gateways(self, org: OrgRecord | None = None) -> list[GatewayRecord]:
        """Gateways of one organisation, or of all, in creation order."""
        query = _gateway_query()
        if org is not None:
            query = query.where(Stage.org_id == org.id)
        return self._gateway_records(query)

    def addressed_gateways(self) -> list[GatewayRecord]:
        """Every gateway that has an address (was activated at least once)."""
        return self._gateway_records(_gateway_query().where(Gateway.address_id.is_not(None)))

    def gateway_by_address(self, address_id: str) -> GatewayRecord | None:
        found = self._gateway_records(_gateway_query().where(Gateway.address_id == address_id))
        return found[0] if found else None

    def save_gateway(self, record: GatewayRecord, now: datetime) -> GatewayRecord:
        """Write a gateway's state, address, token hashes and settings.

        Hashes in ``record.renewed_hashes`` that are not stored yet are added
        (renewed at ``now``); stored ones are never removed here.
        """
        row = self._session.get(Gateway, record.id)
        if row is None:
            raise NotFound(f"gateway of stage {record.key!r} no longer exists")
        if (row.bind_host, row.port_min, row.port_max) != (
            record.settings.bind_host,
            record.settings.port_min,
            record.settings.port_max,
        ):
            self._refuse_overlap(record.key, record.settings, exclude=record.id)
        row.state = record.state.value
        row.address_id = record.address_id
        row.token_hash = record.token_hash
        row.bind_host = record.settings.bind_host
        row.port_min = record.settings.port_min
        row.port_max = record.settings.port_max
        row.allow_cidrs = list(record.settings.allow_cidrs)
        row.activated_at = record.activated_at
        row.token_issued_at = record.token_issued_at
        row.updated_at = now
        stored = set(
            self._session.scalars(
                select(RenewedToken.token_hash).where(RenewedToken.gateway_id == record.id)
            )
        )
        for token_hash in record.renewed_hashes:
            if token_hash not in stored:
                self._session.add(
                    RenewedToken(gateway_id=record.id, token_hash=token_hash, renewed_at=now)
                )
        self._session.flush()
        self._stages_changed = True
        self._changed_stages.add(record.key)
        return self._gateway_records(_gateway_query().where(Gateway.id == record.id))[0]

    def _bindings(self, exclude: int | None = None) -> list[Binding]:
        """Every gateway's (address, port range), in creation order."""
        query = (
            select(
                Gateway.id,
                Org.name,
                Stage.name,
                Gateway.bind_host,
                Gateway.port_min,
                Gateway.port_max,
            )
            .join(Stage, Gateway.stage_id == Stage.id)
            .join(Org, Stage.org_id == Org.id)
            .order_by(Gateway.id)
        )
        return [
            Binding(f"{org}/{stage}", host, low, high)
            for gid, org, stage, host, low, high in self._session.execute(query)
            if gid != exclude
        ]

    def _refuse_overlap(
        self, key: str, settings: PrivateGatewaySettings, exclude: int | None
    ) -> None:
        """Raise Conflict when ``settings`` would share an (address, port) with another stage."""
        candidate = Binding(key, settings.bind_host, settings.port_min, settings.port_max)
        other = first_overlap(candidate, self._bindings(exclude))
        if other is not None:
            raise Conflict(
                f"stage {key!r} cannot listen on {settings.bind_host} ports"
                f" {settings.port_min}-{settings.port_max}: stage {other.key!r} listens on"
                f" {other.bind_host} ports {other.port_min}-{other.port_max}, and two stages"
                " never share an (address, port), or one would receive the other's app"
                " connections; choose another bind address or a disjoint port range"
            )

    def _gateway_records(self, query: Select[Gateway, Stage, Org]) -> list[GatewayRecord]:
        rows = self._session.execute(query.order_by(Gateway.id)).all()
        renewed: dict[int, list[str]] = defaultdict(list)
        if rows:
            ids = [gw.id for gw, _, _ in rows]
            for gateway_id, token_hash in self._session.execute(
                select(RenewedToken.gateway_id, RenewedToken.token_hash)
                .where(RenewedToken.gateway_id.in_(ids))
                .order_by(RenewedToken.id)
            ):
                renewed[gateway_id].append(token_hash)
        return [
            GatewayRecord(
                id=gw.id,
                stage_id=stage.id,
                org_name=org.name,
                stage_name=stage.name,
                state=GatewayState(gw.state),
                address_id=gw.address_id,
                token_hash=gw.token_hash,
                renewed_hashes=tuple(renewed[gw.id]),
                settings=PrivateGatewaySettings(
                    bind_host=gw.bind_host,
                    port_min=gw.port_min,
                    port_max=gw.port_max,
                    allow_cidrs=tuple(gw.allow_cidrs),
                ),
                activated_at=gw.activated_at,
                token_issued_at=gw.token_issued_at,
                updated_at=gw.updated_at,
            )
            for gw, stage, org in rows
        ]


def _gateway_query() -> Select[Gateway, Stage, Org]:
    return (
        select(Gateway, Stage, Org)
        .join(Stage, Gateway.stage_id == Stage.id)
        .join(Org, Stage.org_id == Org.id)
    )


def _name_key(name: str) -> str:
    return name.lower()


def _org(org: Org) -> OrgRecord:
    return OrgRecord(org.id, org.name, org.created_at)
