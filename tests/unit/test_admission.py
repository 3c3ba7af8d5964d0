"""Admission of tunnel upgrades: the pure decision, as a table (issue 12)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from qanat.gateway.admission import Admitted, Peer, Refused, TunnelRequest, admit
from qanat.gateway.context import Limiters
from qanat.gateway.flapping import FlapGuard
from qanat.gateway.stages import StageConfig
from qanat.gateway.tokenlimit import TokenLimiter, TokenLimits
from qanat.wire.tokens import hash_token

TOKEN = "tok-" + "a" * 40
OLD = "tok-" + "b" * 40
STAGE = StageConfig(
    key="acme/dev",
    address_id="sg_00000000-0000-0000-0000-000000000001",
    token_hashes=(hash_token(TOKEN),),
    renewed_hashes=(hash_token(OLD),),
)
INACTIVE = StageConfig(
    key="acme/test",
    address_id="sg_00000000-0000-0000-0000-000000000002",
    token_hashes=(hash_token(TOKEN),),
    active=False,
)
PEER = Peer("192.0.2.7", 40000)


def request(**overrides: object) -> TunnelRequest:
    values: dict[str, object] = {
        "query": "id=123456789&ports=8081",
        "subprotocols": ("chisel-v3",),
        "tokens": (TOKEN,),
        "identities": (),
        "user_agent": "Go-http-client/1.1",
    }
    values.update(overrides)
    return TunnelRequest(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Row:
    name: str
    request: TunnelRequest
    stage: StageConfig | None
    status: int | None  # None: admitted
    body: str = ""
    metric: str | None = None


TABLE = [
    Row("admitted", request(), STAGE, None),
    Row("admitted with an id", request(identities=("warehouse-1",)), STAGE, None),
    Row("no subprotocol", request(subprotocols=()), STAGE, 400, "chisel-v3"),
    Row("other subprotocol", request(subprotocols=("chat",)), STAGE, 400, "chisel-v3"),
    Row("listed among others", request(subprotocols=("chat, chisel-v3",)), STAGE, None),
    Row("no token", request(tokens=()), STAGE, 401, "token missing", "missing"),
    Row("wrong token", request(tokens=("nope",)), STAGE, 401, "token rejected", "bad"),
    Row("two tokens", request(tokens=(TOKEN, TOKEN)), STAGE, 401, "check the token", "bad"),
    Row("oversized token", request(tokens=(), oversized_token=True), STAGE, 401, "check", "bad"),
    Row("unknown address", request(), None, 401, "check the token header", "bad"),
    Row("renewed token", request(tokens=(OLD,)), STAGE, 401, "was renewed", "renewed"),
    Row("inactive stage", request(), INACTIVE, 403, "inactive", "inactive"),
    Row("wrong token, inactive", request(tokens=("x",)), INACTIVE, 401, "rejected", "bad"),
    Row("bad id", request(identities=("no spaces please",)), STAGE, 400, "1-64 characters"),
    Row("two ids", request(identities=("a", "b")), STAGE, 400, "given once"),
]


@pytest.mark.parametrize("row", TABLE, ids=[r.name for r in TABLE])
def test_admission_table(row: Row) -> None:
    decision = admit(row.request, row.stage, PEER, 100.0, Limiters())
    if row.status is None:
        assert isinstance(decision, Admitted), decision
        assert decision.stage is row.stage
        assert decision.info.client_id == "123456789"
        assert decision.info.ports == ("8081",)
        assert decision.info.peer == "192.0.2.7:40000"
        return
    assert isinstance(decision, Refused), decision
    assert decision.status == row.status
    assert row.body in decision.body.decode()
    assert decision.metric == row.metric
    assert decision.log


def test_failed_tokens_are_limited_per_source_and_address_never_a_valid_token() -> None:
    limiters = Limiters(tokens=TokenLimiter(TokenLimits(burst=3, per_minute=1.0)))
    for _ in range(3):
        refused = admit(request(tokens=("x",)), STAGE, PEER, 0.0, limiters)
        assert isinstance(refused, Refused)
        assert refused.status == 401
    limited = admit(request(tokens=("x",)), STAGE, PEER, 1.0, limiters)
    assert isinstance(limited, Refused)
    assert (limited.status, limited.metric) == (429, "rate_limited")
    assert dict(limited.headers) == {"Retry-After": "60"}
    # The real connector, from the very same address, is let in all the same.
    assert isinstance(admit(request(), STAGE, PEER, 1.0, limiters), Admitted)
    # Another source, or another address from this source, has its own count.
    other = admit(request(tokens=("x",)), STAGE, Peer("192.0.2.8", 1), 1.0, limiters)
    assert isinstance(other, Refused)
    assert other.status == 401
    elsewhere = admit(request(tokens=("x",), address_id="sg_other"), STAGE, PEER, 1.0, limiters)
    assert isinstance(elsewhere, Refused)
    assert elsewhere.status == 401
    # Time drains the bucket.
    again = admit(request(tokens=("x",)), STAGE, PEER, 1000.0, limiters)
    assert isinstance(again, Refused)
    assert again.status == 401


def test_renewed_and_inactive_do_not_count_as_failed_attempts() -> None:
    limiters = Limiters(tokens=TokenLimiter(TokenLimits(burst=1, per_minute=1.0)))
    for _ in range(5):
        admit(request(tokens=(OLD,)), STAGE, PEER, 0.0, limiters)
        admit(request(), INACTIVE, PEER, 0.0, limiters)
    assert isinstance(admit(request(), STAGE, PEER, 0.0, limiters), Admitted)


def test_a_flapping_connector_gets_429_with_retry_after() -> None:
    limiters = Limiters(flaps=FlapGuard(max_connects=2, window_s=10.0, backoff_s=4.0))
    ident = request(identities=("w1",))
    for t in (0.0, 0.1, 0.2):
        decision = admit(ident, STAGE, PEER, t, limiters)
        assert isinstance(decision, Admitted)
        limiters.flaps.connected(decision.flap_key, t, PEER.address)
    refused = admit(ident, STAGE, PEER, 0.3, limiters)
    assert isinstance(refused, Refused)
    assert refused.status == 429
    assert dict(refused.headers)["Retry-After"] == "4"
    assert refused.metric is None
    # Another connector of the stage is not affected.
    assert isinstance(admit(request(identities=("w2",)), STAGE, PEER, 0.3, limiters), Admitted)
    assert isinstance(admit(ident, STAGE, PEER, 5.0, limiters), Admitted)
