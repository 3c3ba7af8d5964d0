"""Who is acting, and what their role in an organisation allows.

An :class:`Actor` comes out of authentication (a user's password, an API
key) or stands for the operator of the installation (``Actor.system``, used
by the command line on the server itself). Roles are read again inside every
operation's transaction, so a revoked key or a removed role takes effect on
the very next call.

Rules:

- ``viewer`` may read (stages, status, endpoint catalogue, traffic, audit
  log, members);
- ``operator`` may also write the endpoint catalogue (whoever runs the
  connectors describes the endpoints they serve);
- ``admin`` may also change everything else (activate, deactivate, renew,
  stages, users, keys);
- an API key acts in its one organisation with the role it was given, and
  cannot manage identities (users, roles, keys): that needs a person;
- the system actor may do everything, including what is reserved to the
  operator (a gateway's bind address and port range);
- creating an organisation is a platform-level act: only a **platform
  admin** (a user flag, not a role in any organisation; the first admin of
  the installation is one) or the system actor may do it. A viewer or admin
  of one organisation cannot create another and become its admin;
- someone without a role in an organisation is told it does not exist or is
  not theirs, so organisation names cannot be probed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from qanat.errors import Forbidden, NotFound, Unauthorized
from qanat.portal import apikeys
from qanat.store import OrgRecord, Role, Transaction


class ActorKind(enum.StrEnum):
    USER = "user"
    API_KEY = "apikey"
    SYSTEM = "system"
    #: A connector describing its own endpoints (``describe@qanat``); it acts
    #: on its stage's catalogue only, authenticated by the tunnel's token.
    CONNECTOR = "connector"


@dataclass(frozen=True, slots=True)
class Actor:
    """Someone acting on the portal.

    Attributes:
        kind: person, API key, or the installation's operator.
        name: username, key prefix, or the name of the system component.
        user_id: the user's id (users only).
    """

    kind: ActorKind
    name: str
    user_id: int | None = None

    @classmethod
    def system(cls, name: str = "operator") -> Actor:
        return cls(ActorKind.SYSTEM, name)

    @property
    def label(self) -> str:
        """How the actor appears in the audit log and in messages."""
        if self.kind is ActorKind.API_KEY:
            return f"apikey:{apikeys.display(self.name)}"
        return f"{self.kind.value}:{self.name}"


def role_in(tx: Transaction, actor: Actor, org_name: str, now: datetime) -> tuple[OrgRecord, Role]:
    """The organisation and the actor's role in it.

    Raises:
        NotFound: the organisation does not exist or the actor has no role in it.
        Unauthorized: the actor's API key was revoked or expired meanwhile.
    """
    org = tx.find_org(org_name)
    role: Role | None = None
    if org is not None:
        if actor.kind is ActorKind.SYSTEM:
            role = Role.ADMIN
        elif actor.kind is ActorKind.USER and actor.user_id is not None:
            role = tx.role_of(actor.user_id, org.id)
        elif actor.kind is ActorKind.API_KEY:
            role = _api_key_role(tx, actor, org, now)
    if org is None or role is None:
        raise NotFound(
            f"organisation {org_name!r} does not exist or {actor.label} has no role in it;"
            " check the name, or ask one of its admins for access"
        )
    return org, role


def require(tx: Transaction, actor: Actor, org_name: str, need: Role, now: datetime) -> OrgRecord:
    """The organisation, if the actor's role there is at least ``need``.

    Raises:
        NotFound, Unauthorized: see :func:`role_in`.
        Forbidden: the actor's role is below ``need`` (viewer < operator < admin).
    """
    org, role = role_in(tx, actor, org_name, now)
    if role.rank < need.rank:
        raise Forbidden(
            f"{actor.label} is {_article(role)} {role.value} of organisation {org.name!r};"
            f" this needs the {need.value} role"
            + (" (or admin)" if need is Role.OPERATOR else "")
            + ": ask an admin of the organisation"
        )
    return org


def _article(role: Role) -> str:
    return "an" if role.value[0] in "aeiou" else "a"


def require_person(actor: Actor, what: str) -> None:
    """Refuse API keys for identity management.

    Raises:
        Forbidden: naming the key and what to use instead.
    """
    if actor.kind is ActorKind.API_KEY:
        raise Forbidden(
            f"{actor.label} cannot {what}: API keys do not manage users, roles or keys;"
            " sign in as an admin user"
        )


def require_system(actor: Actor, what: str) -> None:
    """Refuse anything but the installation's operator.

    Raises:
        Forbidden: naming the actor and who can do it.
    """
    if actor.kind is not ActorKind.SYSTEM:
        raise Forbidden(
            f"{actor.label} cannot {what}: that is set by the operator of this qanat"
            " installation (server configuration), not per organisation"
        )


def require_platform_admin(tx: Transaction, actor: Actor, what: str) -> None:
    """Refuse anyone but a platform admin or the installation's operator.

    Raises:
        Forbidden: naming the actor and who can do it.
    """
    if actor.kind is ActorKind.SYSTEM:
        return
    user_id = actor.user_id if actor.kind is ActorKind.USER else None
    if user_id is not None and tx.is_platform_admin(user_id):
        return
    raise Forbidden(
        f"{actor.label} cannot {what}: that needs the platform admin role (a role of the"
        " installation, not of an organisation); ask a platform admin, such as the first"
        " admin of this qanat installation"
    )


def _api_key_role(tx: Transaction, actor: Actor, org: OrgRecord, now: datetime) -> Role | None:
    key = tx.find_api_key(actor.name)
    if key is None or key.org_id != org.id:
        return None
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise Unauthorized(
            f"{actor.label} is no longer valid (revoked or expired); create a new API key"
        )
    return key.role
