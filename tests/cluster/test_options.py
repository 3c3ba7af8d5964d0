"""Bad cluster options are refused before anything starts, naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from qanat.cli import main

DB = "sqlite:////nonexistent/qanat.db"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--nats", "nats://127.0.0.1:1"], "cluster secret"),
        (["--nats", "http://nats:4222", "--cluster-secret-file", "SECRET"], "nats://HOST:4222"),
        (["--nats", "nats://h:1", "--cluster-secret-file", "SHORT"], "openssl rand -hex 32"),
        (["--nats", "nats://h:1", "--cluster-secret-file", "/nonexistent"], "No such file"),
        (["--nats", "nats://h:1", "--cluster-secret-file", "SECRET", "--node-link", "x"],
         "not HOST:PORT"),
        (["--nats", "nats://h:1", "--cluster-secret-file", "SECRET", "--presence-ttl", "30s"],
         "between 1s and 10s"),
        (["--nats", "nats://h:1", "--cluster-secret-file", "SECRET", "--nats-creds", "/nope"],
         "--nats-creds /nope: no such file"),
        (["--bind-map", "127.0.0.1"], "STAGE_ADDR=NODE_ADDR"),
        (["--bind-map", "127.0.0.1=node-b"], "STAGE_ADDR=NODE_ADDR"),
    ],
)  # fmt: skip
def test_bad_cluster_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    says: str,
) -> None:
    monkeypatch.delenv("QANAT_CLUSTER_SECRET", raising=False)
    (tmp_path / "SECRET").write_text("a" * 64)
    (tmp_path / "SHORT").write_text("abc")
    args = [str(tmp_path / a) if a in ("SECRET", "SHORT") else a for a in args]
    code, err = run(capsys, "gateway", "--data-dir", str(tmp_path), "--database-url", DB, *args)
    assert code == 2
    assert says in err


def test_nats_without_a_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QANAT_DATABASE_URL", raising=False)
    code, err = run(capsys, "gateway", "--data-dir", str(tmp_path), "--nats", "nats://h:1")
    assert code == 2
    assert "--nats needs --database-url" in err
