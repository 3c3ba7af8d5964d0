"""Users, roles, API keys and authentication against a real database."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from qanat.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from qanat.portal import Actor, ActorKind, ApiKeyState, Portal, PortalConfig
from qanat.store import Role, Store
from support.store import TEST_HASHER, FakeClock

SRC = "127.0.0.1"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice(portal: Portal, operator: Actor, acme: str) -> Actor:
    """An admin of acme, logged in."""
    portal.create_user(operator, SRC, acme, "alice", PASSWORD, "admin")
    return portal.authenticate_password("alice", PASSWORD, SRC)


@pytest.fixture
def victor(portal: Portal, alice: Actor, acme: str) -> Actor:
    """A viewer of acme, logged in."""
    portal.create_user(alice, SRC, acme, "Victor", PASSWORD, Role.VIEWER)
    return portal.authenticate_password("victor", PASSWORD, SRC)


def test_password_login(portal: Portal, alice: Actor) -> None:
    assert (alice.kind, alice.name) == (ActorKind.USER, "alice")
    again = portal.authenticate_password("  ALICE ", PASSWORD, SRC)
    assert again == alice


def test_wrong_password_and_unknown_user_look_the_same(portal: Portal, alice: Actor) -> None:
    messages = []
    for username, password in [
        ("alice", "wrong password!"),
        ("nobody", PASSWORD),
        ("not a valid name", PASSWORD),
        ("alice", "x" * 5000),
    ]:
        with pytest.raises(Unauthorized) as excinfo:
            portal.authenticate_password(username, password, SRC)
        messages.append(str(excinfo.value))
    assert len(set(messages)) == 1
    assert "alice" not in messages[0]
    assert "exist" not in messages[0]


def test_weaker_password_hash_is_upgraded_at_login(
    store: Store, portal: Portal, alice: Actor, clock: FakeClock
) -> None:
    stronger = dataclasses.replace(TEST_HASHER, log2_n=TEST_HASHER.log2_n + 1)
    upgraded = Portal(store, PortalConfig("https://gw.example.test"), hasher=stronger, clock=clock)
    upgraded.authenticate_password("alice", PASSWORD, SRC)
    with store.transaction(write=False) as tx:
        user = tx.find_user("alice")
    assert user is not None
    assert not stronger.needs_rehash(user.password_hash)
    assert upgraded.authenticate_password("alice", PASSWORD, SRC) == alice


def test_change_password(portal: Portal, alice: Actor) -> None:
    with pytest.raises(Unauthorized):
        portal.change_password(alice, SRC, "not my password", "a brand new password")
    with pytest.raises(InvalidInput, match="10 to 1024"):
        portal.change_password(alice, SRC, PASSWORD, "short")
    portal.change_password(alice, SRC, PASSWORD, "a brand new password")
    with pytest.raises(Unauthorized):
        portal.authenticate_password("alice", PASSWORD, SRC)
    assert portal.authenticate_password("alice", "a brand new password", SRC) == alice


def test_duplicate_user_is_a_conflict(portal: Portal, alice: Actor, acme: str) -> None:
    with pytest.raises(Conflict, match="'alice' already exists"):
        portal.create_user(alice, SRC, acme, "Alice", PASSWORD, "viewer")


def test_viewer_reads_but_cannot_change_anything(
    portal: Portal, alice: Actor, victor: Actor, acme: str
) -> None:
    first = portal.activate(alice, SRC, acme, "Test")
    assert first.token is not None
    assert portal.role_of(victor, acme) is Role.VIEWER
    assert len(portal.list_stages(victor, acme)) == 3
    status = portal.status(victor, acme, "Test")
    assert first.token not in repr(status)
    assert "sha256" not in repr(status)
    assert portal.audit_log(victor, acme)
    for forbidden in (
        lambda: portal.activate(victor, SRC, acme, "Test"),
        lambda: portal.deactivate(victor, SRC, acme, "Test"),
        lambda: portal.renew_token(victor, SRC, acme, "Test"),
        lambda: portal.add_stage(victor, SRC, acme, "Mine"),
        lambda: portal.configure_gateway(victor, SRC, acme, "Test", allow_cidrs=[]),
        lambda: portal.create_user(victor, SRC, acme, "eve", PASSWORD, "admin"),
        lambda: portal.grant_role(victor, SRC, acme, "victor", "admin"),
        lambda: portal.create_api_key(victor, SRC, acme, "ci", "viewer"),
        lambda: portal.list_api_keys(victor, acme),
    ):
        with pytest.raises(Forbidden, match="user:victor is a viewer of organisation 'acme'"):
            forbidden()
    # Still the same token, and the viewer's attempts left no trace.
    assert [e.actor for e in portal.audit_log(alice, acme)].count("user:victor") == 0


def test_outsider_cannot_tell_whether_an_org_exists(
    portal: Portal, operator: Actor, alice: Actor
) -> None:
    portal.create_org(operator, SRC, "globex")
    with pytest.raises(NotFound) as real:
        portal.list_stages(alice, "globex")
    with pytest.raises(NotFound) as missing:
        portal.list_stages(alice, "initech")
    assert str(real.value).replace("globex", "X") == str(missing.value).replace("initech", "X")


def test_only_platform_admins_create_organisations(
    portal: Portal, operator: Actor, alice: Actor, victor: Actor
) -> None:
    # The attack: a viewer (or even an admin) of acme creates org "evil" and
    # becomes its admin. Creating organisations is a platform-level role.
    for who in (victor, alice):
        with pytest.raises(Forbidden, match="platform admin"):
            portal.create_org(who, SRC, "evil")
        with pytest.raises(Forbidden, match="platform admin"):
            portal.set_platform_admin(who, SRC, who.name, True)
    assert [o.name for o in portal.list_orgs(operator)] == ["acme"]
    assert not portal.is_platform_admin(victor)


def test_user_creating_an_org_becomes_its_admin(
    portal: Portal, operator: Actor, alice: Actor
) -> None:
    portal.set_platform_admin(operator, SRC, "alice", True)
    assert portal.is_platform_admin(alice)
    portal.create_org(alice, SRC, "alices-lab")
    assert portal.role_of(alice, "alices-lab") is Role.ADMIN
    assert [o.name for o in portal.list_orgs(alice)] == ["acme", "alices-lab"]


def test_roles_and_last_admin(portal: Portal, alice: Actor, victor: Actor, acme: str) -> None:
    with pytest.raises(Conflict, match="last admin"):
        portal.grant_role(alice, SRC, acme, "alice", "viewer")
    with pytest.raises(Conflict, match="last admin"):
        portal.revoke_role(alice, SRC, acme, "alice")
    portal.grant_role(alice, SRC, acme, "victor", "admin")
    assert portal.role_of(victor, acme) is Role.ADMIN
    portal.grant_role(victor, SRC, acme, "alice", "viewer")
    assert portal.role_of(alice, acme) is Role.VIEWER
    portal.revoke_role(victor, SRC, acme, "alice")
    with pytest.raises(NotFound):
        portal.role_of(alice, acme)
    with pytest.raises(NotFound, match="'nobody' does not exist"):
        portal.grant_role(victor, SRC, acme, "nobody", "viewer")
    with pytest.raises(InvalidInput, match="role 'owner' does not exist"):
        portal.grant_role(victor, SRC, acme, "alice", "owner")
    assert [(m.username, m.role) for m in portal.members(victor, acme)] == [("victor", Role.ADMIN)]


def test_api_key_lifecycle(portal: Portal, alice: Actor, acme: str, clock: FakeClock) -> None:
    created = portal.create_api_key(
        alice, SRC, acme, "deploy pipeline", "admin", expires_at=clock.now + timedelta(days=1)
    )
    assert created.key.startswith(created.info.display + "_")
    assert created.key not in repr(created)
    robot = portal.authenticate_api_key(created.key, SRC)
    assert robot.kind is ActorKind.API_KEY
    assert robot.label == f"apikey:{created.info.display}"
    assert portal.activate(robot, SRC, acme, "Test").first
    listed = portal.list_api_keys(alice, acme)
    assert [(k.display, k.state) for k in listed] == [(created.info.display, ApiKeyState.VALID)]
    assert created.key not in repr(listed)
    entries = portal.audit_log(alice, acme, limit=2)
    assert entries[0].actor == robot.label
    assert entries[1].action == "apikey.create"

    revoked = portal.revoke_api_key(alice, SRC, acme, created.info.display)
    assert revoked.state is ApiKeyState.REVOKED
    with pytest.raises(Unauthorized, match="revoked"):
        portal.authenticate_api_key(created.key, SRC)
    with pytest.raises(Unauthorized, match="no longer valid"):  # an actor obtained before
        portal.deactivate(robot, SRC, acme, "Test")


def test_expired_api_key(portal: Portal, alice: Actor, acme: str, clock: FakeClock) -> None:
    created = portal.create_api_key(
        alice, SRC, acme, "short", "viewer", expires_at=clock.now + timedelta(hours=1)
    )
    robot = portal.authenticate_api_key(created.key, SRC)
    assert portal.list_stages(robot, acme)
    clock.advance(hours=1)
    with pytest.raises(Unauthorized, match="expired"):
        portal.authenticate_api_key(created.key, SRC)
    with pytest.raises(Unauthorized, match="no longer valid"):
        portal.list_stages(robot, acme)
    assert portal.list_api_keys(alice, acme)[0].state is ApiKeyState.EXPIRED


def test_bad_api_keys(portal: Portal, alice: Actor, acme: str, clock: FakeClock) -> None:
    created = portal.create_api_key(alice, SRC, acme, "ci", "viewer")
    forged = created.key[:-4] + ("AAAA" if not created.key.endswith("AAAA") else "BBBB")
    for key in (forged, "qk_0123456789ab_" + "x" * 43):
        with pytest.raises(Unauthorized, match="is not valid"):
            portal.authenticate_api_key(key, SRC)
    with pytest.raises(Unauthorized, match="malformed"):
        portal.authenticate_api_key("hunter2", SRC)
    with pytest.raises(InvalidInput, match="future"):
        portal.create_api_key(alice, SRC, acme, "old", "viewer", expires_at=clock.now)
    with pytest.raises(NotFound, match="no API key"):
        portal.revoke_api_key(alice, SRC, acme, "qk_0123456789ab")


def test_api_keys_do_not_manage_identities(portal: Portal, alice: Actor, acme: str) -> None:
    robot = portal.authenticate_api_key(
        portal.create_api_key(alice, SRC, acme, "ci", "admin").key, SRC
    )
    for call in (
        lambda: portal.create_api_key(robot, SRC, acme, "child", "admin"),
        lambda: portal.create_user(robot, SRC, acme, "eve", PASSWORD, "admin"),
        lambda: portal.grant_role(robot, SRC, acme, "alice", "viewer"),
        lambda: portal.create_org(robot, SRC, "robots"),
    ):
        with pytest.raises(Forbidden, match="sign in as"):
            call()


def test_only_the_operator_moves_bind_address(portal: Portal, alice: Actor, acme: str) -> None:
    with pytest.raises(Forbidden, match="operator"):
        portal.configure_gateway(alice, SRC, acme, "Test", bind_host="0.0.0.0")
    info = portal.configure_gateway(alice, SRC, acme, "Test", allow_cidrs=["10.1.0.0/16"])
    assert info.settings.allow_cidrs == ("10.1.0.0/16",)
