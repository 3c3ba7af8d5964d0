"""Users, roles, API keys and authentication.

Authentication never says which half of a login was wrong: an unknown user
and a wrong password give the same error after the same amount of work (the
KDF runs on a dummy hash). The KDF runs outside any database transaction, so
a slow login never holds a lock.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from qanat.errors import Conflict, InvalidInput, NotFound, Unauthorized
from qanat.portal import apikeys, names
from qanat.portal.access import (
    Actor,
    ActorKind,
    require,
    require_person,
    require_platform_admin,
    role_in,
)
from qanat.portal.context import PortalContext
from qanat.portal.passwords import MAX_PASSWORD_CHARS
from qanat.portal.views import ApiKeyInfo, ApiKeyState, NewApiKey, UserInfo
from qanat.store import ApiKeyRecord, MembershipRecord, OrgRecord, Role, Transaction, UserRecord

log = logging.getLogger(__name__)

_BAD_LOGIN = "wrong username or password; check both and try again"


class IdentityOps(PortalContext):
    """Users and their roles per organisation, API keys, authentication."""

    # -- authentication ------------------------------------------------------

    def authenticate_password(self, username: str, password: str, source: str) -> Actor:
        """The user with this username and password.

        Raises:
            Unauthorized: the same error whether the user exists or not.
        """
        try:
            login = names.username(username)
        except InvalidInput:
            login = ""
        with self._store.transaction(write=False) as tx:
            user = tx.find_user(login) if login else None
        if user is None or len(password) > MAX_PASSWORD_CHARS:
            self._hasher.burn(password)
            log.info("login refused for %r from %s", login, source)
            raise Unauthorized(_BAD_LOGIN)
        if not self._hasher.verify(password, user.password_hash):
            log.info("login refused for %r from %s", login, source)
            raise Unauthorized(_BAD_LOGIN)
        if self._hasher.needs_rehash(user.password_hash):
            new_hash = self._hasher.hash(password)
            with self._store.transaction() as tx:
                tx.set_password_hash(user.id, new_hash)
        return Actor(ActorKind.USER, user.username, user.id)

    def authenticate_api_key(self, key: str, source: str) -> Actor:
        """The actor an API key stands for.

        Raises:
            Unauthorized: the key is malformed, unknown, revoked or expired.
        """
        prefix = apikeys.prefix_of(key)
        if prefix is None:
            raise Unauthorized(
                "API key is malformed: it looks like qk_<12 hex digits>_<43 characters>;"
                " check it was copied whole"
            )
        with self._store.transaction(write=False) as tx:
            record = tx.find_api_key(prefix)
        shown = apikeys.display(prefix)
        if record is None or not apikeys.matches(key, record.key_hash):
            log.info("API key %s refused from %s", shown, source)
            raise Unauthorized(
                f"API key {shown} is not valid; check it was copied whole, or create a new one"
            )
        state = _key_state(record, self._clock())
        if state is not ApiKeyState.VALID:
            when = record.revoked_at if state is ApiKeyState.REVOKED else record.expires_at
            assert when is not None
            raise Unauthorized(
                f"API key {shown} {state.value} on {when:%Y-%m-%d %H:%M} UTC;"
                f" ask an admin of {record.org_name!r} for a new one"
            )
        return Actor(ActorKind.API_KEY, prefix)

    def user_actor(self, username: str) -> Actor:
        """The actor for an existing user, without a password (local admin key).

        Raises:
            Unauthorized: no such user.
        """
        with self._store.transaction(write=False) as tx:
            user = tx.find_user(names.username(username))
        if user is None:
            raise Unauthorized(
                f"the local admin key belongs to user {username!r}, who no longer exists;"
                " delete the key file and restart qanat up to make a new one"
            )
        return Actor(ActorKind.USER, user.username, user.id)

    # -- users and roles -----------------------------------------------------

    def create_first_admin(self, source: str, username: str, password: str) -> bool:
        """Create the installation's first user, if there is no user at all.

        The first user is a platform admin (may create organisations) and has
        no organisation yet; creating one makes them its admin.
        Returns False (and changes nothing) when users exist.

        Raises:
            InvalidInput: malformed username or too short a password.
        """
        login = names.username(username)
        password_hash = self._hasher.hash(names.new_password(password))
        now = self._clock()
        with self._store.transaction() as tx:
            if tx.user_count() > 0:
                return False
            tx.add_user(login, password_hash, now, platform_admin=True)
            self._audit(
                tx,
                Actor.system("qanat-up"),
                source,
                "user.create",
                org=None,
                target=f"user:{login}",
                now=now,
                details={"first_admin": True},
            )
        return True

    def create_user(
        self, actor: Actor, source: str, org: str, username: str, password: str, role: str | Role
    ) -> UserInfo:
        """Create a user with a role in ``org`` (admin of ``org``).

        Raises:
            InvalidInput: malformed username, too short a password, unknown role.
            Conflict: the username is taken (grant them a role instead).
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        require_person(actor, "create users")
        login, given_role = names.username(username), names.role(role)
        password_hash = self._hasher.hash(names.new_password(password))
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            user = tx.add_user(login, password_hash, now)
            tx.set_role(user.id, org_rec.id, given_role)
            self._audit(
                tx,
                actor,
                source,
                "user.create",
                org=org_rec.name,
                target=f"user:{login}",
                now=now,
                details={"role": given_role.value},
            )
            return UserInfo(user.username, user.created_at, tuple(tx.memberships_of(user.id)))

    def grant_role(
        self, actor: Actor, source: str, org: str, username: str, role: str | Role
    ) -> MembershipRecord:
        """Give an existing user a role in ``org``, or change it (admin).

        Raises:
            NotFound: no such user.
            Conflict: it would leave the organisation without an admin.
            Forbidden: see :func:`qanat.portal.access.require`.
        """
        require_person(actor, "change roles")
        login, given_role = names.username(username), names.role(role)
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            user = _user(tx, login)
            previous = tx.role_of(user.id, org_rec.id)
            if previous is Role.ADMIN and given_role is not Role.ADMIN:
                _keep_an_admin(tx, org_rec, login)
            tx.set_role(user.id, org_rec.id, given_role)
            self._audit(
                tx,
                actor,
                source,
                "role.grant",
                org=org_rec.name,
                target=f"user:{login}",
                now=now,
                details={"role": given_role.value, "previous": previous},
            )
        return MembershipRecord(org_rec.name, login, given_role)

    def revoke_role(self, actor: Actor, source: str, org: str, username: str) -> None:
        """Remove a user's role in ``org`` (admin).

        Raises:
            NotFound: no such user, or the user has no role there.
            Conflict: it would leave the organisation without an admin.
            Forbidden: see :func:`qanat.portal.access.require`.
        """
        require_person(actor, "change roles")
        login = names.username(username)
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            user = _user(tx, login)
            previous = tx.role_of(user.id, org_rec.id)
            if previous is None:
                raise NotFound(f"user {login!r} has no role in organisation {org_rec.name!r}")
            if previous is Role.ADMIN:
                _keep_an_admin(tx, org_rec, login)
            tx.remove_role(user.id, org_rec.id)
            self._audit(
                tx,
                actor,
                source,
                "role.revoke",
                org=org_rec.name,
                target=f"user:{login}",
                now=now,
                details={"previous": previous.value},
            )

    def set_platform_admin(self, actor: Actor, source: str, username: str, value: bool) -> None:
        """Give or take the platform admin role (may create organisations).

        Only a platform admin or the operator may; the last platform admin
        cannot be removed by a user (the operator still can).

        Raises:
            NotFound: no such user.
            Forbidden: the actor is not a platform admin.
        """
        require_person(actor, "change platform roles")
        login = names.username(username)
        now = self._clock()
        with self._store.transaction() as tx:
            require_platform_admin(tx, actor, "change platform roles")
            user = _user(tx, login)
            tx.set_platform_admin(user.id, value)
            self._audit(
                tx,
                actor,
                source,
                "platform_admin.grant" if value else "platform_admin.revoke",
                org=None,
                target=f"user:{login}",
                now=now,
                details={},
            )

    def end_sessions(self, user_id: int, at: float) -> None:
        """Revoke every browser session of the user issued before ``at`` (sign-out)."""
        with self._store.transaction() as tx:
            tx.revoke_sessions(user_id, at)

    def session_valid(self, user_id: int, issued_at: float) -> bool:
        """Is a session of ``user_id`` issued at ``issued_at`` still valid?"""
        with self._store.transaction(write=False) as tx:
            if not tx.user_exists(user_id):
                return False
            after = tx.sessions_valid_after(user_id)
        return after is None or issued_at > after

    def is_platform_admin(self, actor: Actor) -> bool:
        """Whether the actor may create organisations."""
        if actor.kind is ActorKind.SYSTEM:
            return True
        if actor.kind is not ActorKind.USER or actor.user_id is None:
            return False
        with self._store.transaction(write=False) as tx:
            return tx.is_platform_admin(actor.user_id)

    def members(self, actor: Actor, org: str) -> list[MembershipRecord]:
        """Users with a role in ``org`` (viewer)."""
        with self._store.transaction(write=False) as tx:
            org_rec = require(tx, actor, org, Role.VIEWER, self._clock())
            return tx.members(org_rec)

    def role_of(self, actor: Actor, org: str) -> Role:
        """The actor's role in ``org``: the authorisation helper for the UI and API.

        Raises:
            NotFound: no such organisation, or no role in it.
            Unauthorized: the actor's API key was revoked or expired.
        """
        with self._store.transaction(write=False) as tx:
            return role_in(tx, actor, org, self._clock())[1]

    def change_password(self, actor: Actor, source: str, current: str, new: str) -> None:
        """Change the acting user's own password.

        Every browser session of the user issued before the change ends.

        Raises:
            Unauthorized: ``current`` is wrong.
            InvalidInput: ``new`` is too short or too long.
            Forbidden: the actor is not a user.
        """
        if actor.kind is not ActorKind.USER:
            require_person(actor, "change a password")
            raise InvalidInput("the operator has no password; change a user's password instead")
        new_hash = self._hasher.hash(names.new_password(new))
        checked = self.authenticate_password(actor.name, current, source)
        now = self._clock()
        with self._store.transaction() as tx:
            assert checked.user_id is not None
            tx.set_password_hash(checked.user_id, new_hash)
            tx.revoke_sessions(checked.user_id, time.time())
            self._audit(
                tx,
                actor,
                source,
                "user.password",
                org=None,
                target=f"user:{actor.name}",
                now=now,
            )

    # -- API keys ------------------------------------------------------------

    def create_api_key(
        self,
        actor: Actor,
        source: str,
        org: str,
        name: str,
        role: str | Role,
        *,
        expires_at: datetime | None = None,
    ) -> NewApiKey:
        """Create an API key for ``org``; the key is in the result, once (admin).

        Raises:
            InvalidInput: malformed name, unknown role, expiry not in the future.
            NotFound, Forbidden: see :func:`qanat.portal.access.require`.
        """
        require_person(actor, "create API keys")
        label, given_role = names.label(name, "API key name"), names.role(role)
        now = self._clock()
        if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
            raise InvalidInput(
                f"API key expiry {expires_at.isoformat()} must be an aware time in the future"
            )
        generated = apikeys.generate()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            record = tx.add_api_key(
                org_rec,
                prefix=generated.prefix,
                key_hash=generated.key_hash,
                name=label,
                role=given_role,
                created_by=actor.label,
                now=now,
                expires_at=expires_at,
            )
            shown = apikeys.display(record.prefix)
            self._audit(
                tx,
                actor,
                source,
                "apikey.create",
                org=org_rec.name,
                target=f"apikey:{shown}",
                now=now,
                details={
                    "name": label,
                    "role": given_role.value,
                    "expires_at": expires_at.isoformat() if expires_at else None,
                },
            )
        return NewApiKey(_key_info(record, now), generated.key)

    def list_api_keys(self, actor: Actor, org: str) -> list[ApiKeyInfo]:
        """The organisation's API keys, without secrets (admin)."""
        now = self._clock()
        with self._store.transaction(write=False) as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            return [_key_info(k, now) for k in tx.list_api_keys(org_rec)]

    def revoke_api_key(self, actor: Actor, source: str, org: str, key: str) -> ApiKeyInfo:
        """Revoke an API key, named by its prefix (``qk_<hex>``) or whole (admin).

        Raises:
            NotFound: the organisation has no such key.
            Forbidden: see :func:`qanat.portal.access.require`.
        """
        require_person(actor, "revoke API keys")
        prefix = _prefix_from(key)
        now = self._clock()
        with self._store.transaction() as tx:
            org_rec = require(tx, actor, org, Role.ADMIN, now)
            record = tx.find_api_key(prefix)
            if record is None or record.org_id != org_rec.id:
                raise NotFound(
                    f"organisation {org_rec.name!r} has no API key {apikeys.display(prefix)};"
                    " list its keys to see which exist"
                )
            changed = record.revoked_at is None
            tx.revoke_api_key(record.id, now)
            self._audit(
                tx,
                actor,
                source,
                "apikey.revoke",
                org=org_rec.name,
                target=f"apikey:{apikeys.display(prefix)}",
                now=now,
                details={"changed": changed},
            )
            refreshed = tx.find_api_key(prefix)
        assert refreshed is not None
        return _key_info(refreshed, now)


def _user(tx: Transaction, login: str) -> UserRecord:
    user = tx.find_user(login)
    if user is None:
        raise NotFound(f"user {login!r} does not exist; create the user first")
    return user


def _keep_an_admin(tx: Transaction, org: OrgRecord, login: str) -> None:
    if tx.admin_count(org.id) <= 1:
        raise Conflict(
            f"user {login!r} is the last admin of organisation {org.name!r}; make someone"
            " else admin first"
        )


def _prefix_from(key: str) -> str:
    text = key.strip()
    whole = apikeys.prefix_of(text)
    if whole is not None:
        return whole
    bare = text.removeprefix(apikeys.KEY_PREFIX)
    if len(bare) == 12 and all(c in "0123456789abcdef" for c in bare):
        return bare
    raise InvalidInput(f"{key!r} does not name an API key; give its prefix, like qk_0123abcd4567")


def _key_state(record: ApiKeyRecord, now: datetime) -> ApiKeyState:
    if record.revoked_at is not None:
        return ApiKeyState.REVOKED
    if record.expires_at is not None and record.expires_at <= now:
        return ApiKeyState.EXPIRED
    return ApiKeyState.VALID


def _key_info(record: ApiKeyRecord, now: datetime) -> ApiKeyInfo:
    return ApiKeyInfo(
        org=record.org_name,
        name=record.name,
        display=apikeys.display(record.prefix),
        role=record.role,
        created_by=record.created_by,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        state=_key_state(record, now),
    )
