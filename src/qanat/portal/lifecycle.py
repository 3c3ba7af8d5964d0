"""Organisations, stages and the life of a stage's private gateway.

State of one gateway (the transitions are the methods below)::

                 activate (first: address + token, token shown once)
    Inactive  ------------------------------------------------>  Active
      ^   <----------------------------------------------------   |  |
      |                      deactivate                           |  | renew_token:
      |                                                            |  | new token shown once,
      +-- reactivate: same address, same token  ------------------+  | old hash kept as "renewed"
                                                                      v
                                                                   Active

Each method is one transaction and writes one audit entry, also when it
changes nothing (activating an active gateway), so that the log shows every
request an admin made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from qanat.errors import Conflict, Forbidden
from qanat.portal import names
from qanat.portal.access import (
    Actor,
    ActorKind,
    require,
    require_platform_admin,
    require_system,
)
from qanat.portal.context import PortalContext
from qanat.portal.views import (
    Activation,
    EndpointStatus,
    GatewayStatus,
    IssuedToken,
    OrgInfo,
    StageInfo,
)
from qanat.store import (
    AuditFilter,
    AuditRecord,
    ConnectorRecord,
    GatewayRecord,
    GatewayState,
    Role,
    Transaction,
)
from qanat.wire.tokens import hash_token, new_address_id, new_token


class LifecycleOps(PortalContext):
    """Organisations, stages, gateway activation and status."""

    def create_org(self, actor: Actor, source: str, name: str) -> OrgInfo:
        """Create an organisation with the default stages, all Inactive.

        Only a platform admin (or the operator) may; a user who creates an
        organisation becomes its admin. Each stage gets its own bind address
        from the installation's pool (see :class:`~qanat.portal.PortalConfig`).

        Raises:
            InvalidInput: the name is malformed.
            Conflict: the name is taken, or the bind address pool is used up.
            Forbidden: the actor is an API key or not a platform admin.
        """
        org_name = names.org_name(name)
        if actor.kind is ActorKind.API_KEY:
            raise Forbidden(
                f"{actor.label} cannot create organisations: API keys act inside their own"
                " organisation; sign in as a user"
            )
        stage_names = [names.stage_name(s) for s in self._config.default_stages]
        now = self._clock()
        with self._store.transaction() as tx:
            require_platform_admin(tx, actor, "create organisations")
            org = tx.add_org(org_name, now)
            for stage in stage_names:
                tx.add_stage(
                    org, stage, self._config.stage_defaults, now, bind_pool=self._config.bind_pool
                )
            if actor.kind is ActorKind.USER and actor.user_id is not None:
                tx.set_role(actor.user_id, org.id, Role.ADMIN)
            self._audit(
                tx,
                actor,
                source,
                "org.create",
                org=org.name,
                target=f"org:{org.name}",
                now=now,
                details={"stages": stage_names},
            )
        return OrgInfo(org.name, org.created_at, tuple(stage_names))

    def list_orgs(self, actor: Actor) -> list[OrgInfo]:
        """The organisations the actor has a role in (all, for the system actor)."""
        with self._store.transaction(write=False) as tx:
            if actor.kind is ActorKind.SYSTEM:
                orgs = tx.list_orgs()
            elif actor.kind is ActorKind.USER and actor.user_id is not None:
                mine = {m.org_name for m in tx.memberships_of(actor.user_id)}
                orgs = [o for o in tx.list_orgs() if o.name in mine]
            else:
                key = tx.find_api_key(actor.name)
                orgs = [o for o in tx.list_orgs() if key is not None and o.id == key.org_id]
            return [
                OrgInfo(o.name, o.created_at, tuple(s.name for s in tx.list_stages(o)))
                for o in orgs
            ]

    def add_stage(self, actor: Actor, source: str, org: str, name: str) -> StageInfo:
        """Add a stage (with its Inactive gateway) to an organisation.

        Raises:
            InvalidInput: the name is malformed.
            Conflict: the organisation has a stage of that name (ignoring case).
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        stage_name = names.stage_name(name)
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            stage = tx.add_stage(
                org_rec,
                stage_name,
                self._config.stage_defaults,
                now,
                bind_pool=self._config.bind_pool,
            )
            self._audit(tx, actor, source, "stage.add", org=org_rec.name, target=stage.key, now=now)
            return self._stage_info(tx.gateway(stage))

    def list_stages(self, actor: Actor, org: str) -> list[StageInfo]:
        """Every stage of the organisation with its gateway's state (viewer)."""
        with self._store.transaction(write=False) as tx:
            org_rec = require(tx, actor, org, Role.VIEWER, self._clock())
            return [self._stage_info(g) for g in tx.gateways(org_rec)]

    def activate(self, actor: Actor, source: str, org: str, stage: str) -> Activation:
        """Let connectors in. The first time, create the address and the token.

        The token is in the result of the first activation only; later
        activations return the same address and ``token=None``.

        Raises:
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            gateway = tx.gateway(tx.stage(org_rec, stage), for_update=True)
            token: str | None = None
            if gateway.address_id is None:
                token = new_token()
                gateway = replace(
                    gateway,
                    address_id=new_address_id(),
                    token_hash=hash_token(token),
                    token_issued_at=now,
                )
            changed = gateway.state is not GatewayState.ACTIVE
            if changed:
                gateway = replace(gateway, state=GatewayState.ACTIVE, activated_at=now)
                gateway = tx.save_gateway(gateway, now)
            assert gateway.address_id is not None
            address = self._config.address(gateway.address_id)
            details = {"first": token is not None, "changed": changed, "address": address}
            self._audit_stage(tx, actor, source, "gateway.activate", gateway, now, details)
            info = self._stage_info(gateway)
        return Activation(info, address, token, first=token is not None, changed=changed)

    def deactivate(self, actor: Actor, source: str, org: str, stage: str) -> StageInfo:
        """Refuse connectors; the gateway closes the stage's tunnels within 1 s.

        Address and token are kept for reactivation.

        Raises:
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            gateway = tx.gateway(tx.stage(org_rec, stage), for_update=True)
            changed = gateway.state is GatewayState.ACTIVE
            if changed:
                gateway = tx.save_gateway(replace(gateway, state=GatewayState.INACTIVE), now)
            self._audit_stage(
                tx, actor, source, "gateway.deactivate", gateway, now, {"changed": changed}
            )
            return self._stage_info(gateway)

    def renew_token(self, actor: Actor, source: str, org: str, stage: str) -> IssuedToken:
        """Issue a new token (shown once); the old one is refused as "renewed".

        Tunnels already open with the old token are not touched.

        Raises:
            Conflict: the gateway is inactive.
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            gateway = tx.gateway(tx.stage(org_rec, stage), for_update=True)
            if gateway.state is not GatewayState.ACTIVE or gateway.token_hash is None:
                raise Conflict(
                    f"the gateway of stage {gateway.key!r} is inactive, so its token cannot be"
                    " renewed; activate the stage first, then renew the token"
                )
            token = new_token()
            gateway = tx.save_gateway(
                replace(
                    gateway,
                    token_hash=hash_token(token),
                    renewed_hashes=(*gateway.renewed_hashes, gateway.token_hash),
                    token_issued_at=now,
                ),
                now,
            )
            assert gateway.address_id is not None
            address = self._config.address(gateway.address_id)
            self._audit_stage(
                tx,
                actor,
                source,
                "gateway.renew_token",
                gateway,
                now,
                {"address": address, "renewals": len(gateway.renewed_hashes)},
            )
            return IssuedToken(self._stage_info(gateway), address, token)

    def configure_gateway(
        self,
        actor: Actor,
        source: str,
        org: str,
        stage: str,
        *,
        allow_cidrs: Iterable[str] | None = None,
        bind_host: str | None = None,
        ports: tuple[int, int] | None = None,
    ) -> StageInfo:
        """Change which app networks may connect (admin) or where the gateway
        listens (bind address and port range: the installation's operator only).

        Raises:
            InvalidInput: a malformed network, address or port range.
            Forbidden: bind address or ports changed by anyone but the operator.
            NotFound: see :func:`qanat.portal.access.require`.
        """
        if bind_host is not None or ports is not None:
            require_system(actor, "change a gateway's bind address or port range")
        cidrs = None if allow_cidrs is None else names.cidrs(allow_cidrs)
        host = None if bind_host is None else names.bind_host(bind_host)
        port_range = None if ports is None else names.port_range(*ports)
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            gateway = tx.gateway(tx.stage(org_rec, stage), for_update=True)
            settings = gateway.settings
            details: dict[str, object] = {}
            if cidrs is not None:
                settings = replace(settings, allow_cidrs=cidrs)
                details["allow_cidrs"] = list(cidrs)
            if host is not None:
                settings = replace(settings, bind_host=host)
                details["bind_host"] = host
            if port_range is not None:
                settings = replace(settings, port_min=port_range[0], port_max=port_range[1])
                details["ports"] = f"{port_range[0]}-{port_range[1]}"
            details["changed"] = settings != gateway.settings
            if details["changed"]:
                gateway = tx.save_gateway(replace(gateway, settings=settings), now)
            self._audit_stage(tx, actor, source, "gateway.configure", gateway, now, details)
            return self._stage_info(gateway)

    def _audit_stage(
        self,
        tx: Transaction,
        actor: Actor,
        source: str,
        action: str,
        gateway: GatewayRecord,
        now: datetime,
        details: Mapping[str, Any],
    ) -> None:
        self._audit(
            tx,
            actor,
            source,
            action,
            org=gateway.org_name,
            target=gateway.key,
            now=now,
            details=details,
        )

    def status(self, actor: Actor, org: str, stage: str) -> GatewayStatus:
        """The stage's gateway, its live connectors and endpoints (viewer).

        Never includes a token or a token hash.
        """
        with self._store.transaction(write=False) as tx:
            org_rec = require(tx, actor, org, Role.VIEWER, self._clock())
            stage_rec = tx.stage(org_rec, stage)
            gateway = tx.gateway(stage_rec)
            connectors = tx.connectors([stage_rec.id])
            return GatewayStatus(
                self._stage_info(gateway), tuple(connectors), _endpoints(connectors)
            )

    def audit_log(
        self,
        actor: Actor,
        org: str,
        *,
        limit: int = 100,
        before_id: int | None = None,
        where: AuditFilter | None = None,
    ) -> list[AuditRecord]:
        """The organisation's audit entries, newest first, paged by id (viewer).

        ``where.target`` may name a stage as ``org/stage`` (any case); it is
        matched against the stage's stored name.
        """
        limit = max(1, min(limit, self._config.audit_page_max))
        with self._store.transaction(write=False) as tx:
            org_rec = require(tx, actor, org, Role.VIEWER, self._clock())
            if where is not None and where.target:
                stage_name = where.target.partition("/")[2] or where.target
                where = replace(where, target=tx.stage(org_rec, stage_name).key)
            return tx.audit_entries(org_rec.name, limit=limit, before_id=before_id, where=where)


def _endpoints(connectors: Iterable[ConnectorRecord]) -> tuple[EndpointStatus, ...]:
    by_port: dict[int, tuple[list[str], list[str]]] = {}
    for connector in connectors:
        for endpoint in connector.endpoints:
            ids, targets = by_port.setdefault(endpoint.port, ([], []))
            ids.append(connector.connector_id)
            if endpoint.target not in targets:
                targets.append(endpoint.target)
    return tuple(
        EndpointStatus(port, tuple(ids), tuple(targets))
        for port, (ids, targets) in sorted(by_port.items())
    )
