"""The portal (control plane): organisations, stages, activation, tokens, access.

How it works::

    service.py    Portal: every operation as a method taking the acting
                  Actor and the request's source address; the HTTP API, the
                  web pages and the CLI are thin layers over it
    lifecycle.py  organisations, stages, activate / deactivate / renew_token,
                  gateway settings, status, audit log
    identity.py   users, roles per organisation, API keys, authentication
    catalogue.py  the endpoint catalogue of each stage (operator writes,
                  viewer reads; merged with the live connectors) and traffic
    openapidoc.py OpenAPI documents: size limit, structural check, summary
    declared.py   connectors' own descriptions (describe@qanat) -> catalogue
    access.py     Actor and the role checks (viewer < operator < admin per organisation)
    passwords.py  scrypt password hashes;  apikeys.py  API key format and hash
    names.py      validation of names, passwords, networks (InvalidInput)
    config.py     PortalConfig: public base URL and defaults for new stages
    views.py      the frozen results; secrets only where shown once
    localadmin.py first admin and the local admin key of ``qanat up``
    http/         the REST API (/api/v1, OpenAPI), the pages, sessions, CSRF

Every operation is one transaction of ``qanat.store`` and writes its audit
entry inside that transaction: a change and its audit line are committed
together or not at all. A stage's token is generated here, returned once,
and only its SHA-256 is stored; the gateway, in this or another process,
learns of every change through ``qanat.store.DatabaseStageSource`` within
a second.

The portal never imports SQLAlchemy: it reads and writes through the
store's ``Transaction`` methods, which return plain records.
"""

# The names below are imported on first use (PEP 562), so that a light
# module of this package (localadmin, used by ``qanat admin``) can be imported
# without the store and SQLAlchemy behind the service.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qanat.portal.access import Actor, ActorKind
    from qanat.portal.config import PortalConfig
    from qanat.portal.passwords import PasswordHasher
    from qanat.portal.service import Portal
    from qanat.portal.views import (
        Activation,
        ApiKeyInfo,
        ApiKeyState,
        EndpointStatus,
        GatewayStatus,
        IssuedToken,
        NewApiKey,
        OrgInfo,
        StageInfo,
        UserInfo,
    )

_HOMES = {
    "Actor": "access",
    "ActorKind": "access",
    "PortalConfig": "config",
    "PasswordHasher": "passwords",
    "Portal": "service",
    "Activation": "views",
    "ApiKeyInfo": "views",
    "ApiKeyState": "views",
    "EndpointStatus": "views",
    "GatewayStatus": "views",
    "IssuedToken": "views",
    "NewApiKey": "views",
    "OrgInfo": "views",
    "StageInfo": "views",
    "UserInfo": "views",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qanat.portal' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"qanat.portal.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Activation",
    "Actor",
    "ActorKind",
    "ApiKeyInfo",
    "ApiKeyState",
    "EndpointStatus",
    "GatewayStatus",
    "IssuedToken",
    "NewApiKey",
    "OrgInfo",
    "PasswordHasher",
    "Portal",
    "PortalConfig",
    "StageInfo",
    "UserInfo",
]
