"""Queries on users, roles and API keys (a Transaction mixin)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from qanat.errors import Conflict
from qanat.store.models import ApiKey, Membership, Org, User
from qanat.store.records import ApiKeyRecord, MembershipRecord, OrgRecord, Role, UserRecord


class IdentityQueries:
    """Users, memberships (role per organisation) and API keys."""

    _session: Session

    # -- users ---------------------------------------------------------------

    def add_user(
        self, username: str, password_hash: str, now: datetime, *, platform_admin: bool = False
    ) -> UserRecord:
        """Create a user (``platform_admin``: may create organisations).

        Raises:
            Conflict: the username is taken.
        """
        if self.find_user(username) is not None:
            raise Conflict(
                f"user {username!r} already exists; give them a role in the organisation"
                " instead of creating them again"
            )
        user = User(
            username=username,
            password_hash=password_hash,
            created_at=now,
            platform_admin=platform_admin,
        )
        self._session.add(user)
        self._session.flush()
        return _user(user)

    def user_count(self) -> int:
        return int(self._session.scalar(select(func.count()).select_from(User)) or 0)

    def find_user(self, username: str) -> UserRecord | None:
        user = self._session.scalars(select(User).where(User.username == username)).one_or_none()
        return None if user is None else _user(user)

    def is_platform_admin(self, user_id: int) -> bool:
        user = self._session.get(User, user_id)
        return user is not None and bool(user.platform_admin)

    def set_platform_admin(self, user_id: int, value: bool) -> None:
        user = self._session.get(User, user_id)
        if user is not None:
            user.platform_admin = value
            self._session.flush()

    def sessions_valid_after(self, user_id: int) -> float | None:
        """Sessions issued before this time are revoked (None: none revoked)."""
        user = self._session.get(User, user_id)
        return None if user is None else user.sessions_valid_after

    def user_exists(self, user_id: int) -> bool:
        return self._session.get(User, user_id) is not None

    def revoke_sessions(self, user_id: int, at: float) -> None:
        user = self._session.get(User, user_id)
        if user is not None:
            user.sessions_valid_after = at
            self._session.flush()

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        user = self._session.get(User, user_id)
        if user is not None:
            user.password_hash = password_hash
            self._session.flush()

    # -- roles ---------------------------------------------------------------

    def role_of(self, user_id: int, org_id: int) -> Role | None:
        role = self._session.scalar(
            select(Membership.role).where(
                Membership.user_id == user_id, Membership.org_id == org_id
            )
        )
        return None if role is None else Role(role)

    def set_role(self, user_id: int, org_id: int, role: Role) -> None:
        membership = self._session.get(Membership, (user_id, org_id))
        if membership is None:
            self._session.add(Membership(user_id=user_id, org_id=org_id, role=role.value))
        else:
            membership.role = role.value
        self._session.flush()

    def remove_role(self, user_id: int, org_id: int) -> bool:
        result = self._session.execute(
            delete(Membership).where(Membership.user_id == user_id, Membership.org_id == org_id)
        )
        return bool(getattr(result, "rowcount", 0))

    def admin_count(self, org_id: int) -> int:
        count = self._session.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.org_id == org_id, Membership.role == Role.ADMIN.value)
        )
        return int(count or 0)

    def members(self, org: OrgRecord) -> list[MembershipRecord]:
        rows = self._session.execute(
            select(User.username, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.org_id == org.id)
            .order_by(User.username)
        )
        return [MembershipRecord(org.name, username, Role(role)) for username, role in rows]

    def memberships_of(self, user_id: int) -> list[MembershipRecord]:
        rows = self._session.execute(
            select(Org.name, User.username, Membership.role)
            .join(Membership, Membership.org_id == Org.id)
            .join(User, Membership.user_id == User.id)
            .where(Membership.user_id == user_id)
            .order_by(Org.name)
        )
        return [MembershipRecord(org, user, Role(role)) for org, user, role in rows]

    # -- API keys ------------------------------------------------------------

    def add_api_key(
        self,
        org: OrgRecord,
        *,
        prefix: str,
        key_hash: str,
        name: str,
        role: Role,
        created_by: str,
        now: datetime,
        expires_at: datetime | None,
    ) -> ApiKeyRecord:
        key = ApiKey(
            org_id=org.id,
            prefix=prefix,
            key_hash=key_hash,
            name=name,
            role=role.value,
            created_by=created_by,
            created_at=now,
            expires_at=expires_at,
        )
        self._session.add(key)
        self._session.flush()
        return _api_key(key, org.name)

    def find_api_key(self, prefix: str) -> ApiKeyRecord | None:
        row = self._session.execute(
            select(ApiKey, Org.name)
            .join(Org, ApiKey.org_id == Org.id)
            .where(ApiKey.prefix == prefix)
        ).one_or_none()
        return None if row is None else _api_key(row[0], row[1])

    def list_api_keys(self, org: OrgRecord) -> list[ApiKeyRecord]:
        keys = self._session.scalars(
            select(ApiKey).where(ApiKey.org_id == org.id).order_by(ApiKey.id)
        )
        return [_api_key(k, org.name) for k in keys]

    def revoke_api_key(self, key_id: int, now: datetime) -> None:
        key = self._session.get(ApiKey, key_id)
        if key is not None and key.revoked_at is None:
            key.revoked_at = now
            self._session.flush()


def _user(user: User) -> UserRecord:
    return UserRecord(
        user.id, user.username, user.password_hash, user.created_at, bool(user.platform_admin)
    )


def _api_key(key: ApiKey, org_name: str) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key.id,
        org_id=key.org_id,
        org_name=org_name,
        prefix=key.prefix,
        key_hash=key.key_hash,
        name=key.name,
        role=Role(key.role),
        created_by=key.created_by,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )
