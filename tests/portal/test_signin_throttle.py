"""Password guessing against qanat up: throttled, and no one else pays for it.

Observed: 100 wrong passwords (169 ms each), then the right one accepted; 16
parallel guessing loops filled the worker threads and stretched a stage
deactivation from 0.24 s to 3.2 s. Now the name (and the source) is
throttled, and hashing has a pool of its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from portalkit import api_client, running_up

from qanat.portal import PasswordHasher
from qanat.portal.http import PortalHttpSettings
from qanat.portal.signin import SignInLimits
from qanat.up import Up

PASSWORD = "the right password, long enough"


async def _attempt(session: aiohttp.ClientSession, up: Up, user: str, password: str) -> int:
    body = {"username": user, "password": password}
    async with session.post(up.url + "/api/v1/session", json=body) as r:
        await r.read()
        return r.status


async def _setup(up: Up, *users: str) -> None:
    async with api_client(up) as api:
        await api.ok("POST", "/orgs", {"name": "acme"})
        for user in users:
            body = {"username": user, "password": PASSWORD, "role": "viewer"}
            await api.ok("POST", "/orgs/acme/users", body)


def test_100_wrong_passwords_then_the_right_one_is_throttled(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, aiohttp.ClientSession() as session:
            await _setup(up, "erin", "frank")
            statuses = [await _attempt(session, up, "erin", f"guess {i}") for i in range(100)]
            assert statuses[:10] == [401] * 10
            assert set(statuses[10:]) == {429}
            # The right password is refused too while the name is throttled ...
            assert await _attempt(session, up, "erin", PASSWORD) == 429
            async with session.post(
                up.url + "/api/v1/session", json={"username": "ERIN", "password": PASSWORD}
            ) as r:
                assert r.status == 429
                assert int(r.headers["Retry-After"]) > 0
                assert (await r.json())["type"] == "urn:qanat:problem:too-many-attempts"
            # ... and so is this source, for every name, after 30 failures.
            assert await _attempt(session, up, "frank", PASSWORD) == 429

    asyncio.run(scenario())


def test_guessing_loops_do_not_stretch_control_plane_work(tmp_path: Path) -> None:
    """16 parallel loops of real scrypt hashing, unthrottled (limits raised so
    that the loops keep the hashing pool busy). A deactivation and an API key
    call meanwhile must not wait behind the hashes: while one of them runs,
    fewer sign-ins finish than the hashing pool could even start."""
    limits = SignInLimits(per_user=10**6, per_source=10**6, hash_threads=2, hash_queue=64)

    async def scenario() -> None:
        async with running_up(
            tmp_path, hasher=PasswordHasher(), http=PortalHttpSettings(signin=limits)
        ) as up:
            await _setup(up, "erin")
            async with api_client(up) as api:
                await api.ok("POST", "/orgs/acme/stages/Development/activate")
                finished = 0
                stop = asyncio.Event()

                async def guess(session: aiohttp.ClientSession, n: int) -> None:
                    nonlocal finished
                    for i in range(200):
                        if stop.is_set():
                            return
                        assert await _attempt(session, up, "erin", f"loop {n} guess {i}") == 401
                        finished += 1

                async with aiohttp.ClientSession() as session:
                    loops = [asyncio.create_task(guess(session, n)) for n in range(16)]
                    while finished < 4:  # the pool is saturated and the queue full
                        await asyncio.sleep(0.05)
                    rounds = []
                    for _ in range(3):
                        before = finished
                        await api.ok("POST", "/orgs/acme/stages/Development/deactivate")
                        await api.ok("GET", "/orgs/acme/stages/Development")
                        await api.ok("POST", "/orgs/acme/stages/Development/activate")
                        rounds.append(finished - before)
                    stop.set()
                    await asyncio.gather(*loops)
                # Sharing the pool, each call would wait for ~16 queued hashes.
                print(f"sign-ins finished while the control calls ran: {rounds}")
                assert min(rounds) < 8, rounds

    asyncio.run(scenario())


def test_behind_a_trusted_proxy_each_client_has_its_own_sign_in_count(tmp_path: Path) -> None:
    """Behind the TLS-terminating proxy every sign-in comes from the proxy's
    address: without --trusted-proxy one guesser would lock out everyone."""
    settings = PortalHttpSettings(trusted_proxy_cidrs=("127.0.0.1/32",))

    async def attempt(session: aiohttp.ClientSession, up: Up, client: str, pw: str) -> int:
        body = {"username": "frank", "password": pw}
        headers = {"X-Forwarded-For": client}
        async with session.post(up.url + "/api/v1/session", json=body, headers=headers) as r:
            await r.read()
            return r.status

    async def scenario() -> None:
        async with running_up(tmp_path, http=settings) as up, aiohttp.ClientSession() as session:
            await _setup(up, *(f"user{i}" for i in range(4)), "frank")
            for i in range(40):  # different names: only the source count fills
                body = {"username": f"user{i % 4}", "password": "wrong"}
                headers = {"X-Forwarded-For": "203.0.113.7"}
                async with session.post(
                    up.url + "/api/v1/session", json=body, headers=headers
                ) as r:
                    await r.read()
            assert await attempt(session, up, "203.0.113.7", PASSWORD) == 429
            assert await attempt(session, up, "198.51.100.9", PASSWORD) == 200

    asyncio.run(scenario())
