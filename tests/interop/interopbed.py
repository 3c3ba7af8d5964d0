"""Interop test bed: a real ``qanat up`` (HTTPS, development certificate) and
the Go peer (tests/interop/gopeer) as chisel-like clients and servers.

One ``qanat up`` is shared per test module (:func:`bed`); the Go processes
of a test are killed when it ends (:func:`peers`). Tests that change a
stage (renew, deactivate) make their own organisation in the shared
``qanat up``, so the others keep theirs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.gopeer import peer_env
from support.processes import LoggedProcess, ProcessGroup
from support.upprocess import Stage, UpProcess

_orgs = itertools.count(1)


@dataclass
class Bed:
    up: UpProcess
    stage: Stage
    gopeer: Path

    def new_stage(self, prefix: str) -> Stage:
        """A stage of a fresh organisation, activated (for tests that change it)."""
        org = f"{prefix}{next(_orgs)}"
        self.up.create_org(org)
        return self.up.activate(org)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, gopeer: Path) -> Iterator[Bed]:
    workdir = tmp_path_factory.mktemp("interop")
    group = ProcessGroup(workdir)
    try:
        up = UpProcess(group, workdir / "data")
        up.create_org("acme")
        yield Bed(up, up.activate("acme"), gopeer)
    finally:
        group.close()


class Peers:
    """Go peer (and other) processes of one test; all killed when it ends."""

    def __init__(self, gopeer: Path, workdir: Path) -> None:
        self.gopeer = gopeer
        self.group = ProcessGroup(workdir)

    def program(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> LoggedProcess:
        return self.group.start_program(name, argv, env if env is not None else peer_env())

    def close(self) -> None:
        self.group.close()


class Clients:
    """Go clients of one test against the module's ``qanat up``."""

    def __init__(self, bed: Bed, peers: Peers) -> None:
        self.bed = bed
        self.peers = peers

    def client(
        self,
        remotes: list[str],
        *flags: str,
        stage: Stage | None = None,
        token: str | None = None,
        name: str = "go client",
    ) -> LoggedProcess:
        """``gopeer client`` like ``chisel client --header "token: ..."``,
        retrying every second at most, trusting the dev certificate."""
        stage = stage or self.bed.stage
        argv = [
            str(self.bed.gopeer),
            "client",
            "-header",
            f"token: {stage.token if token is None else token}",
            "-max-retry-interval",
            "1s",
            *flags,
            stage.address,
            *remotes,
        ]
        return self.peers.program(name, argv, peer_env(self.bed.up.ca_file))


@pytest.fixture
def peers(gopeer: Path, tmp_path: Path) -> Iterator[Peers]:
    p = Peers(gopeer, tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def clients(bed: Bed, peers: Peers) -> Clients:
    return Clients(bed, peers)
