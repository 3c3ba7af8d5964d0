"""The portal (control plane): organisations, stages, activation, tokens, access.

How it works::

    service.py    Portal: every operation as a method taking the acting
                  Actor and the request's source address; the HTTP API, the
                  web pages and the CLI are thin layers over it
    lifecycle.py  organisations, stages, activate / deactivate / renew_token,
                  gateway settings, status, audit log
    identity.py   users, roles per organisation, API keys, authentication
    access.py     Actor and the role checks (admin vs viewer per organisation)
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
