"""Stage lifecycle through the portal service, checked on the gateway's view.

The verdicts come from ``check_token`` on the StageConfig that the database
stage source builds, i.e. exactly what a gateway would decide.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import sqlalchemy as sa

from qanat.errors import Conflict, InvalidInput, NotFound
from qanat.gateway.stages import StageConfig, TokenVerdict, check_token
from qanat.portal import Actor, Portal
from qanat.store import DatabaseStageSource, GatewayState, Store
from qanat.wire.tokens import is_address_id
from support.store import BASE_URL, FakeClock

SRC = "127.0.0.1"
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}\Z")  # 256 bits, URL-safe base64


def gateway_view(store: Store, address: str) -> StageConfig:
    """The StageConfig a gateway following this database sees now."""
    source = DatabaseStageSource(store)
    asyncio.run(source.refresh())
    found = source.lookup(address.rsplit("/", 1)[1])
    assert found is not None
    return found


def test_new_org_has_default_stages_all_inactive(portal: Portal, operator: Actor) -> None:
    org = portal.create_org(operator, SRC, "  ACME ")
    assert org.name == "acme"
    assert org.stages == ("Development", "Test", "Production")
    stages = portal.list_stages(operator, "acme")
    assert [s.name for s in stages] == ["Development", "Test", "Production"]
    assert {s.state for s in stages} == {GatewayState.INACTIVE}
    assert {s.address for s in stages} == {None}


def test_never_activated_stage_is_not_in_gateway_view(
    portal: Portal, store: Store, operator: Actor, acme: str
) -> None:
    source = DatabaseStageSource(store)
    asyncio.run(source.refresh())
    assert source.stages() == []


def test_first_activation_returns_address_and_token_once(
    portal: Portal, store: Store, operator: Actor, acme: str, clock: FakeClock
) -> None:
    first = portal.activate(operator, SRC, acme, "test")  # stage names ignore case
    assert first.first
    assert first.changed
    assert first.token is not None
    assert TOKEN.match(first.token)
    assert first.address.startswith(BASE_URL + "/")
    assert is_address_id(first.address.rsplit("/", 1)[1])
    assert first.stage.state is GatewayState.ACTIVE
    assert first.stage.activated_at == clock.now
    assert first.token not in repr(first)

    again = portal.activate(operator, SRC, acme, "Test")
    assert (again.address, again.token, again.first, again.changed) == (
        first.address,
        None,
        False,
        False,
    )

    view = gateway_view(store, first.address)
    assert view.key == "acme/Test"
    assert view.active
    assert check_token(view, first.token) is TokenVerdict.OK
    assert check_token(view, "not-the-token") is TokenVerdict.BAD


def test_only_the_token_hash_is_stored(
    portal: Portal, store: Store, operator: Actor, acme: str
) -> None:
    token = portal.activate(operator, SRC, acme, "Development").token
    assert token is not None
    engine = sa.create_engine(store.config.url)  # plain engine: read every table raw
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                    assert token not in repr(tuple(row)), table
    finally:
        engine.dispose()


def test_addresses_are_unique_per_stage(portal: Portal, operator: Actor, acme: str) -> None:
    portal.create_org(operator, SRC, "globex")
    addresses = {
        portal.activate(operator, SRC, org, stage).address
        for org in ("acme", "globex")
        for stage in ("Development", "Test", "Production")
    }
    assert len(addresses) == 6


def test_deactivate_then_reactivate_keeps_address_and_token(
    portal: Portal, store: Store, operator: Actor, acme: str
) -> None:
    first = portal.activate(operator, SRC, acme, "Production")
    assert first.token is not None
    off = portal.deactivate(operator, SRC, acme, "Production")
    assert off.state is GatewayState.INACTIVE
    assert off.address == first.address
    view = gateway_view(store, first.address)
    assert not view.active
    assert check_token(view, first.token) is TokenVerdict.INACTIVE

    again = portal.deactivate(operator, SRC, acme, "Production")  # idempotent
    assert again.state is GatewayState.INACTIVE

    back = portal.activate(operator, SRC, acme, "Production")
    assert (back.address, back.token, back.changed) == (first.address, None, True)
    assert check_token(gateway_view(store, first.address), first.token) is TokenVerdict.OK


def test_renew_token_refuses_old_token_as_renewed(
    portal: Portal, store: Store, operator: Actor, acme: str
) -> None:
    first = portal.activate(operator, SRC, acme, "Test")
    assert first.token is not None
    second = portal.renew_token(operator, SRC, acme, "Test")
    assert TOKEN.match(second.token)
    assert second.token != first.token
    assert second.address == first.address
    assert second.stage.renewed_tokens == 1
    assert second.token not in repr(second)
    third = portal.renew_token(operator, SRC, acme, "Test")

    view = gateway_view(store, first.address)
    assert check_token(view, third.token) is TokenVerdict.OK
    assert check_token(view, second.token) is TokenVerdict.RENEWED
    assert check_token(view, first.token) is TokenVerdict.RENEWED

    # Reactivation after a renewal brings back the renewed token, not the first.
    portal.deactivate(operator, SRC, acme, "Test")
    portal.activate(operator, SRC, acme, "Test")
    view = gateway_view(store, first.address)
    assert check_token(view, third.token) is TokenVerdict.OK
    assert check_token(view, first.token) is TokenVerdict.RENEWED


@pytest.mark.parametrize("deactivated", [False, True], ids=["never-activated", "deactivated"])
def test_renew_on_inactive_gateway_is_refused(
    portal: Portal, operator: Actor, acme: str, deactivated: bool
) -> None:
    if deactivated:
        portal.activate(operator, SRC, acme, "Test")
        portal.deactivate(operator, SRC, acme, "Test")
    before = portal.audit_log(operator, acme)
    with pytest.raises(Conflict, match=r"'acme/Test' is inactive.*activate the stage first"):
        portal.renew_token(operator, SRC, acme, "Test")
    assert portal.audit_log(operator, acme) == before  # refused: nothing written


def test_every_change_is_audited(
    portal: Portal, operator: Actor, acme: str, clock: FakeClock
) -> None:
    steps = [
        ("stage.add", lambda: portal.add_stage(operator, "10.9.8.7", acme, "Staging")),
        ("gateway.activate", lambda: portal.activate(operator, "10.9.8.7", acme, "Staging")),
        ("gateway.renew_token", lambda: portal.renew_token(operator, "10.9.8.7", acme, "Staging")),
        ("gateway.deactivate", lambda: portal.deactivate(operator, "10.9.8.7", acme, "Staging")),
        ("gateway.activate", lambda: portal.activate(operator, "10.9.8.7", acme, "Staging")),
        (
            "gateway.configure",
            lambda: portal.configure_gateway(
                operator, "10.9.8.7", acme, "Staging", allow_cidrs=["10.0.0.7/8"]
            ),
        ),
    ]
    times = []
    for _, step in steps:
        times.append(clock.advance(seconds=1))
        step()
    entries = list(reversed(portal.audit_log(operator, acme)))
    assert entries[0].action == "org.create"
    assert [e.action for e in entries[1:]] == [action for action, _ in steps]
    for entry, at in zip(entries[1:], times, strict=True):
        assert entry.actor == "system:test"
        assert entry.target == "acme/Staging"
        assert entry.source_address == "10.9.8.7"
        assert entry.org == "acme"
        assert entry.at == at
    assert entries[2].details["first"] is True
    assert entries[-1].details["allow_cidrs"] == ["10.0.0.0/8"]
    page = portal.audit_log(operator, acme, limit=2, before_id=entries[-1].id)
    assert [e.id for e in page] == [entries[-2].id, entries[-3].id]


def test_stage_names_are_unique_per_org_ignoring_case(
    portal: Portal, operator: Actor, acme: str
) -> None:
    added = portal.add_stage(operator, SRC, acme, "Staging")
    assert (added.name, added.state) == ("Staging", GatewayState.INACTIVE)
    for duplicate in ("Staging", "staging", "TEST"):
        with pytest.raises(Conflict, match="already has a stage named"):
            portal.add_stage(operator, SRC, acme, duplicate)
    portal.create_org(operator, SRC, "globex")
    assert portal.add_stage(operator, SRC, "globex", "Staging").name == "Staging"
    names = [s.name for s in portal.list_stages(operator, acme)]
    assert names == ["Development", "Test", "Production", "Staging"]


def test_duplicate_org_is_a_conflict(portal: Portal, operator: Actor, acme: str) -> None:
    with pytest.raises(Conflict, match="'acme' already exists"):
        portal.create_org(operator, SRC, "Acme")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, a: p.create_org(a, SRC, "not an org!"), "organisation name"),
        (lambda p, a: p.add_stage(a, SRC, "acme", "dev/prod"), "stage name"),
        (lambda p, a: p.add_stage(a, SRC, "acme", ""), "stage name"),
        (lambda p, a: p.add_stage(a, "\x00", "acme", "Ok"), "source address"),
        (lambda p, a: p.configure_gateway(a, SRC, "acme", "Test", allow_cidrs=["x"]), "CIDR"),
        (lambda p, a: p.configure_gateway(a, SRC, "acme", "Test", bind_host="gw"), "bind"),
        (lambda p, a: p.configure_gateway(a, SRC, "acme", "Test", ports=(9, 8)), "port range"),
    ],
)
def test_malformed_input_is_refused_and_nothing_written(
    portal: Portal, operator: Actor, acme: str, call: object, message: str
) -> None:
    before = portal.audit_log(operator, acme)
    with pytest.raises(InvalidInput, match=message):
        call(portal, operator)  # type: ignore[operator]
    assert portal.audit_log(operator, acme) == before
    assert len(portal.list_stages(operator, acme)) == 3


def test_unknown_org_and_stage_are_named(portal: Portal, operator: Actor, acme: str) -> None:
    with pytest.raises(NotFound, match="organisation 'nope' does not exist"):
        portal.activate(operator, SRC, "nope", "Test")
    with pytest.raises(NotFound, match="'acme' has no stage 'Nope'"):
        portal.activate(operator, SRC, acme, "Nope")


def test_operator_sets_bind_address_and_ports(
    portal: Portal, store: Store, operator: Actor, acme: str
) -> None:
    address = portal.activate(operator, SRC, acme, "Test").address
    info = portal.configure_gateway(
        operator,
        SRC,
        acme,
        "Test",
        bind_host="127.0.0.2",
        ports=(8000, 8099),
        allow_cidrs=["127.0.0.0/8", "::1/128"],
    )
    assert (info.settings.bind_host, info.settings.port_min, info.settings.port_max) == (
        "127.0.0.2",
        8000,
        8099,
    )
    view = gateway_view(store, address)
    assert view.bind_host == "127.0.0.2"
    assert view.allows_port(8081)
    assert not view.allows_port(9000)


def test_every_stage_gets_its_own_bind_address(
    portal: Portal, store: Store, operator: Actor, acme: str
) -> None:
    for org in ("globex", "initech"):
        portal.create_org(operator, SRC, org)
    portal.add_stage(operator, SRC, "globex", "Staging")
    hosts = [
        s.settings.bind_host
        for org in ("acme", "globex", "initech")
        for s in portal.list_stages(operator, org)
    ]
    assert len(hosts) == 10
    assert len(set(hosts)) == 10, hosts
    assert all(h.startswith("127.") for h in hosts)


def test_no_stage_may_overlap_another_stages_address_and_ports(
    portal: Portal, operator: Actor, acme: str
) -> None:
    portal.create_org(operator, SRC, "evil")
    victim = next(s for s in portal.list_stages(operator, acme) if s.name == "Production")
    host = victim.settings.bind_host
    with pytest.raises(Conflict, match=r"stage 'acme/Production' listens on"):
        portal.configure_gateway(operator, SRC, "evil", "Development", bind_host=host)
    # A wildcard address would receive every stage's connections too.
    with pytest.raises(Conflict, match="never share an"):
        portal.configure_gateway(operator, SRC, "evil", "Development", bind_host="0.0.0.0")
    # Same address, disjoint port ranges: allowed (no port is shared).
    portal.configure_gateway(operator, SRC, acme, "Production", ports=(8000, 8099))
    portal.configure_gateway(operator, SRC, "evil", "Test", ports=(9000, 9099))
    portal.configure_gateway(operator, SRC, "evil", "Test", bind_host=host)
    with pytest.raises(Conflict, match="never share an"):
        portal.configure_gateway(operator, SRC, "evil", "Test", ports=(8090, 9099))


def test_a_full_bind_pool_is_a_clear_conflict(store: Store, operator: Actor) -> None:
    from qanat.portal import PortalConfig
    from support.store import TEST_HASHER

    portal = Portal(store, PortalConfig(BASE_URL, bind_pool="127.0.9.0/31"), hasher=TEST_HASHER)
    with pytest.raises(Conflict, match=r"no free bind address left in 127.0.9.0/31"):
        portal.create_org(operator, SRC, "acme")  # three stages, two addresses
    assert portal.list_orgs(operator) == []
