"""One gateway assembly: the same signals for every way of running a gateway (issue 12).

``qanat up``, ``qanat gateway`` (stage file) and ``qanat gateway
--database-url`` run as real processes and get real signals: SIGHUP reloads
(the TLS certificate, and the stage source where it has one), SIGUSR2 logs
the status, SIGTERM stops with exit 0. Before issue 12 SIGHUP and SIGUSR2
killed ``qanat up`` and the database gateway (exit 129).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from qanat.store import StoreConfig, open_store
from support.processes import ProcessGroup, QanatProcess

pytestmark = pytest.mark.slow


def _sighup_sigusr2_sigterm(process: QanatProcess) -> None:
    mark = process.mark()
    process.send(signal.SIGHUP)
    process.wait_for(r"SIGHUP: reloaded", start=mark)
    mark = process.mark()
    process.send(signal.SIGUSR2)
    process.wait_for(r"status \{", start=mark)
    assert process.proc.poll() is None, process.output
    process.send(signal.SIGTERM)
    assert process.wait_exit() == 0, process.output
    assert "shutting down" in process.output


def test_qanat_up_survives_sighup_and_sigusr2(procs: ProcessGroup, tmp_path: Path) -> None:
    process = procs.start(
        "up",
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        "127.0.0.1:0",
        # The gateway's tuning flags work for qanat up too (issue 12, bug 5).
        *("--keepalive", "2s", "--keepalive-misses", "2", "--keepalive-timeout", "1s"),
        *("--channel-open-timeout", "3s", "--hedge-after-max", "0.5s"),
    )
    process.wait_for(r"Ctrl-C", timeout_s=30)
    assert (
        "keepalive every 2s, 1s timeout, 2 misses: silent connectors leave their pools "
        "within 5s; channel opens time out after 3s, a second connector is asked after "
        "at most 0.5s" in process.output
    ), process.output
    _sighup_sigusr2_sigterm(process)
    # The development certificate was reloaded, not just the signal survived.
    assert "reloaded the TLS certificate" in process.output


def test_bad_tuning_is_refused_with_the_flag_named(procs: ProcessGroup, tmp_path: Path) -> None:
    for command in (["up"], ["gateway"]):
        done = procs.run(
            *command, "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
            "--channel-open-timeout", "0s",
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "--channel-open-timeout must be more than 0s" in done.stderr


def test_database_gateway_survives_sighup_and_sigusr2(procs: ProcessGroup, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    open_store(StoreConfig(url=url)).close()  # migrated, empty
    process = procs.start(
        "gateway",
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "gw"),
        "--database-url",
        url,
    )
    process.wait_for(r"listening on http://127\.0\.0\.1:\d+", timeout_s=30)
    _sighup_sigusr2_sigterm(process)


def test_stage_file_gateway_signals(procs: ProcessGroup, tmp_path: Path) -> None:
    data, stages = tmp_path / "data", tmp_path / "stages.toml"
    procs.add_stage(data, stages)
    process, _port = procs.gateway(data, stages)
    _sighup_sigusr2_sigterm(process)
    assert "1 stage(s)" in process.output
