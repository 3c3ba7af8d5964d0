"""The portal service: every lifecycle and identity operation as a method.

``Portal`` is what the HTTP API, the web pages and the command line call.
Each operation takes the acting :class:`~qanat.portal.access.Actor` and the
request's source address, runs in one database transaction, and (when it
changes something) writes one audit entry in that same transaction.

Errors are the ``PortalError`` family (NotFound, Conflict, Forbidden,
Unauthorized, InvalidInput) and the ``StoreError`` family (database busy or
unreachable) from :mod:`qanat.errors`.
"""

from __future__ import annotations

from qanat.portal.catalogue import CatalogueOps
from qanat.portal.identity import IdentityOps
from qanat.portal.lifecycle import LifecycleOps


class Portal(LifecycleOps, IdentityOps, CatalogueOps):
    """All portal operations; construct with ``Portal(store, PortalConfig(...))``.

    Methods (see each for what it raises)::

        create_org(actor, source, name) -> OrgInfo
        list_orgs(actor) -> list[OrgInfo]
        add_stage(actor, source, org, name) -> StageInfo
        list_stages(actor, org) -> list[StageInfo]
        activate(actor, source, org, stage) -> Activation
        deactivate(actor, source, org, stage) -> StageInfo
        renew_token(actor, source, org, stage) -> IssuedToken
        configure_gateway(actor, source, org, stage, *, allow_cidrs, bind_host, ports)
        status(actor, org, stage) -> GatewayStatus
        audit_log(actor, org, *, limit, before_id, where) -> list[AuditRecord]
        catalogue(actor, org, stage) -> StageCatalogue
        set_endpoint / set_openapi_document / remove_endpoint (operator)
        openapi_file / openapi_summary / catalogue_entry (viewer)
        traffic(actor, org, stage, *, minutes) -> StageTraffic
        authenticate_password(username, password, source) -> Actor
        authenticate_api_key(key, source) -> Actor
        create_user(actor, source, org, username, password, role) -> UserInfo
        grant_role / revoke_role / members / role_of / change_password
        create_api_key(actor, source, org, name, role, *, expires_at) -> NewApiKey
        list_api_keys(actor, org) / revoke_api_key(actor, source, org, key)
    """
