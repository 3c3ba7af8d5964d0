"""Three gateway nodes behind a real HAProxy, one portal, PostgreSQL and NATS.

Everything runs as real processes started here (see support/clusterbed.py);
connectors are ``qanat connect`` processes dialling the balancer.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.clusterbed import (
    GO_IDENTITY,
    ClusterBed,
    Load,
    Streams,
    api_status,
    exchange,
    missing_parts,
)
from support.timing import wait_until

pytestmark = pytest.mark.slow


def _save_logs(bed: ClusterBed) -> None:
    # For a post-mortem: every process's output, in QANAT_CLUSTER_LOGS when set.
    where = Path(os.environ.get("QANAT_CLUSTER_LOGS") or bed.root)
    where.mkdir(parents=True, exist_ok=True)
    for process in bed.group.started:
        (where / f"{process.name}-{process.pid}.log").write_text(process.output)
    if (bed.root / "echo.log").exists():
        (where / "echo.log").write_text((bed.root / "echo.log").read_text())


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[ClusterBed]:
    why = missing_parts()
    if why is not None:
        if os.environ.get("CI") == "true" or os.geteuid() == 0:
            pytest.fail(f"{why}; `make system-deps` installs it (as root this never skips)")
        pytest.skip(f"{why}; not root, so `make system-deps` could not install it")
    bed = ClusterBed(tmp_path)
    try:
        bed.start()
        yield bed
    finally:
        _save_logs(bed)
        bed.close()


@pytest.fixture
def go_client(request: pytest.FixtureRequest) -> Path | None:
    """The Go peer (tests/interop) when it can be built here, else None: the
    tests then run with qanat connectors only."""
    try:
        return Path(request.getfixturevalue("gopeer"))
    except pytest.skip.Exception:
        return None


def connectors_everywhere(
    bed: ClusterBed, names: list[str], gopeer: Path | None = None
) -> dict[str, str]:
    """Start connectors (the Go peer as one more when given); wait until each is
    connected to some node; return who holds whom (names are regexes)."""
    for name in names:
        bed.start_connector(name)
    if gopeer is not None:
        bed.start_go_connector(gopeer)
        names = [*names, GO_IDENTITY]
    wait_until(lambda: all(bed.holder(n) for n in names), "every connector connected", 30)
    return {n: bed.holder(n).name for n in names}  # type: ignore[union-attr]


def all_nodes_serve(bed: ClusterBed) -> bool:
    for node in bed.nodes:
        try:
            exchange(node.bind, bed.app_port, b"ping", timeout_s=2)
        except OSError as exc:
            assert bed.endpoint is not None
            print(f"  {node.name} not serving: {exc!r} (echo: {bed.endpoint.proc.poll()})")
            return False
    return True


def spread_two(bed: ClusterBed, go_client: Path | None) -> tuple[str, str]:
    """Two connectors (qanat, and the Go peer when available) on two different
    nodes, so that the third node has none; their names (regexes)."""
    bed.start_connector("c0")
    wait_until(lambda: bed.holder("c0"), "c0 connected", 30)
    for attempt in range(5):
        if go_client is not None:
            other, process = GO_IDENTITY, bed.start_go_connector(go_client, f"go{attempt}")
        else:
            other, process = f"c{attempt + 1}", bed.start_connector(f"c{attempt + 1}")
        wait_until(lambda: bed.holder(other), f"{other} connected", 30)  # noqa: B023
        if bed.holder(other) is not bed.holder("c0"):
            return "c0", other
        process.kill_group()  # same node as c0: try again through the balancer
        bed.connectors.remove(process)
    pytest.fail("the balancer put both connectors on one node five times")


def test_any_node_serves_an_app_and_a_killed_nodes_connectors_come_back(
    bed: ClusterBed, go_client: Path | None
) -> None:
    first, second = spread_two(bed, go_client)
    wait_until(lambda: all_nodes_serve(bed), "every node serving the port", 20)
    exchange(*bed.app_address, b"via haproxy" * 100)  # through the balancer too
    # Each node's /metrics, scraped as Prometheus would, shows the cluster.
    for node in bed.nodes:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{node.front_port}/metrics", timeout=10
        ) as answer:
            scraped = answer.read().decode()
        assert "qanat_cluster_nats_connected 1.0" in scraped, node.name
        assert "qanat_cluster_draining 0.0" in scraped, node.name

    victim = bed.holder(first)
    keeper = bed.holder(second)
    assert victim is not None
    assert keeper is not None
    empty = next(n for n in bed.nodes if n not in (victim, keeper))
    survivors = [keeper, empty]
    marks = bed.marks()
    with Load([(n.bind, bed.app_port) for n in survivors], rate=200) as load:
        time.sleep(1.0)  # load before the kill: part of what is measured, not a wait
        killed_at = time.monotonic()
        bed.kill_node(victim)
        dead_at = load.since()  # the process is gone: connections started later count
        wait_until(
            lambda: bed.holder(first, marks) in survivors,
            "the killed node's connector back on a survivor",
            30,
        )
        back_s = time.monotonic() - killed_at
        time.sleep(2.0)  # more load after the recovery, within the presence TTL
    # Connections started before the node died may have been carried by it
    # (to its connector, over the node link): those are cut with it, as a
    # killed connector cuts its own (docs/operations.md, "what cannot be saved").
    pairs = list(zip(load.failures, load.failed_started, strict=True))
    cut = [f for f, begun in pairs if begun < dead_at]
    failed = [f for f, begun in pairs if begun >= dead_at]
    print(
        f"\nkill -9 {victim.name}: its connector back on a survivor after {back_s:.2f}s; "
        f"{load.total} app connections on the survivors, {len(failed)} failed after the "
        f"kill, {len(cut)} open at the kill cut"
    )
    assert load.total > 500
    assert failed == [], failed[:5]
    # The node without a connector did try the dead node and went on to the next.
    assert empty.process is not None
    # (refused, or reset when the attempt was under way as it died).
    assert empty.process.find(rf"node link 127\.0\.0\.1:{victim.link_port}: ")


def test_rolling_restart_fails_no_app_connection_and_loses_no_byte(
    bed: ClusterBed, go_client: Path | None
) -> None:
    connectors_everywhere(bed, ["c0", "c1"], go_client)
    wait_until(lambda: all_nodes_serve(bed), "every node serving the port", 20)
    streams = Streams(bed.app_address, count=6, seconds=4.0)
    with Load([bed.app_address], rate=200) as load:
        streams.start()
        started = time.monotonic()
        for node in bed.nodes:
            assert node.process is not None
            node.process.send(signal.SIGTERM)
            assert node.process.wait_exit(40) == 0, node.process.output[-3000:]
            bed.start_node(node)
            wait_until(lambda: all_nodes_serve(bed), "every node serving again", 30)
        took = time.monotonic() - started
        streams.join()
    print(
        f"\nrolling restart of {len(bed.nodes)} nodes in {took:.1f}s: {load.total} app "
        f"connections, {len(load.failures)} failed; streams sent {streams.sent} bytes, "
        f"lost {streams.lost}"
    )
    assert load.total > 1000
    logs = "\n".join(
        line
        for n in bed.group.started
        for line in n.lines
        if "failed" in line or "drain" in line or "Error" in line or "  File" in line
    )
    assert load.failures == [], f"{load.failures[:5]}\n{logs[-6000:]}"
    assert streams.errors == []
    assert streams.lost == 0


def test_a_postgresql_restart_keeps_traffic_and_the_portal_answers_503(
    bed: ClusterBed,
) -> None:
    connectors_everywhere(bed, ["c0", "c1"])
    wait_until(lambda: all_nodes_serve(bed), "every node serving the port", 20)
    assert bed.pg is not None
    with Load([bed.app_address], rate=100) as load:
        bed.pg.pause()
        status, problem = api_status(bed, "/orgs/acme/stages/Development")
        assert status == 503, problem
        assert "database" in problem["detail"].lower() or "database" in problem["title"].lower()
        exchange(*bed.app_address, b"during the outage" * 100)
        bed.pg.resume()
        wait_until(
            lambda: api_status(bed, "/orgs/acme/stages/Development")[0] == 200,
            "the portal answering again",
            30,
        )
    assert load.failures == [], load.failures[:5]
    # Everything resumes: a deactivation reaches every node again.
    bed.request("POST", "/orgs/acme/stages/Development/deactivate", {})
    wait_until(
        lambda: not any(_serves(n.bind, bed.app_port) for n in bed.nodes),
        "the port closed on every node",
        10,
    )


def _serves(host: str, port: int) -> bool:
    try:
        exchange(host, port, b"x", timeout_s=1)
    except OSError:
        return False
    return True
