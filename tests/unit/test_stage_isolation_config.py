"""Stage isolation rules that need no socket: allowlists, names, manifests, log bounds."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from qanat.errors import ConfigError
from qanat.gateway.bindcheck import bind_problem
from qanat.gateway.reach import hosts_line, kubernetes_manifest
from qanat.gateway.refusals import RefusalLog
from qanat.gateway.stages import (
    LOOPBACK_ALLOW,
    FileStageSource,
    StageConfig,
    find_stage,
    load_stage_file,
    stage_allowlist,
)
from qanat.logs import ContextLogger

ADDRESS = "sg_0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def _stage_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stages.toml"
    path.write_text(f'[[stage]]\nname = "acme/dev"\naddress_id = "{ADDRESS}"\n{body}')
    return path


def test_loopback_bind_defaults_to_loopback_sources_only() -> None:
    assert stage_allowlist("s", "127.0.0.1", None) == LOOPBACK_ALLOW
    assert stage_allowlist("s", "::1", None) == LOOPBACK_ALLOW


@pytest.mark.parametrize("bind", ["10.77.1.1", "192.168.5.5", "0.0.0.0", "fd00::1"])
def test_non_loopback_bind_needs_an_explicit_allowlist(bind: str) -> None:
    with pytest.raises(ConfigError, match="'allow' must list the app networks"):
        stage_allowlist("stage 'dev'", bind, None)


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "10.0.0.0/0"])
def test_everyone_is_refused_unless_forced(everyone: str) -> None:
    with pytest.raises(ConfigError, match="allow_everyone = true"):
        stage_allowlist("s", "10.77.1.1", [everyone])
    assert stage_allowlist("s", "10.77.1.1", [everyone], everyone=True)


def test_allowlist_is_normalised_and_may_be_empty() -> None:
    assert stage_allowlist("s", "10.77.1.1", ["10.77.1.5/24", "fd00::5/64"]) == (
        "10.77.1.0/24",
        "fd00::/64",
    )
    assert stage_allowlist("s", "10.77.1.1", []) == ()


@pytest.mark.parametrize("bad", ["10.77.1.0/24", ["not-a-cidr"], 5])
def test_allowlist_shapes(bad: object) -> None:
    with pytest.raises(ConfigError):
        stage_allowlist("s", "10.77.1.1", bad)


def test_stage_file_applies_the_rule(tmp_path: Path) -> None:
    path = _stage_file(tmp_path, 'bind = "10.77.1.1"\n')
    with pytest.raises(ConfigError, match=r"stage file .*stage 'acme/dev': bind 10\.77\.1\.1"):
        load_stage_file(path)
    path = _stage_file(tmp_path, 'bind = "10.77.1.1"\nallow = ["0.0.0.0/0"]\n')
    with pytest.raises(ConfigError, match="admits every source"):
        load_stage_file(path)
    path = _stage_file(
        tmp_path, 'bind = "10.77.1.1"\nallow = ["0.0.0.0/0"]\nallow_everyone = true\n'
    )
    assert load_stage_file(path)[ADDRESS].allow_cidrs == ("0.0.0.0/0",)
    path = _stage_file(tmp_path, 'bind = "10.77.1.1"\nallow = ["10.77.1.0/24"]\n')
    assert load_stage_file(path)[ADDRESS].allow_cidrs == ("10.77.1.0/24",)


def test_unbindable_stage_is_named_in_a_warning_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 192.0.2.1 (TEST-NET-1) is never an address of this host; only bind() is tried.
    path = _stage_file(tmp_path, 'bind = "192.0.2.1"\nallow = ["192.0.2.0/24"]\n')
    source = FileStageSource(path)
    with caplog.at_level(logging.WARNING, "qanat.gateway.stages"):
        asyncio.run(source.start())
    assert source.lookup(ADDRESS) is not None
    assert "stage 'acme/dev': bind address 192.0.2.1 is not an address of the gateway host" in (
        caplog.text
    )
    assert "other stages are unaffected" in caplog.text


def test_bind_problem() -> None:
    assert bind_problem("127.0.0.1") is None
    problem = bind_problem("192.0.2.1")
    assert problem is not None
    assert "not an address of the gateway host" in problem


def _stages(*keys: str) -> dict[str, StageConfig]:
    return {k: StageConfig(key=k, address_id=k) for k in keys}


def test_find_stage_by_key_or_last_part() -> None:
    stages = _stages("acme/dev", "acme/prod", "beta/dev")
    assert find_stage(stages, "acme/dev").key == "acme/dev"
    assert find_stage(stages, "prod").key == "acme/prod"
    with pytest.raises(ConfigError, match="ambiguous"):
        find_stage(stages, "dev")
    with pytest.raises(ConfigError, match=r"no stage named 'test' \(stages: acme/dev"):
        find_stage(stages, "test")


def test_hosts_line() -> None:
    stage = StageConfig(key="acme/dev", address_id=ADDRESS, bind_host="10.77.1.1")
    assert hosts_line(stage) == "10.77.1.1 secure-gateway"


def test_kubernetes_manifest() -> None:
    stage = StageConfig(key="acme/dev", address_id=ADDRESS, bind_host="10.77.1.1")
    text = kubernetes_manifest(stage, "acme-dev", [8081, 8082])
    assert "kind: Service\n" in text
    assert "selector" not in text.replace("No selector", "")
    assert "kubernetes.io/service-name: secure-gateway" in text
    assert '- addresses: ["10.77.1.1"]' in text
    assert text.count("namespace: acme-dev") == 2
    assert "port: 8082" in text
    loopback = StageConfig(key="acme/dev", address_id=ADDRESS)
    with pytest.raises(ConfigError, match="cannot be a Kubernetes endpoint"):
        kubernetes_manifest(loopback, "acme-dev", [8081])
    with pytest.raises(ConfigError, match="--port"):
        kubernetes_manifest(stage, "acme-dev", [])


def test_shipped_manifest_matches_the_generator() -> None:
    shipped = Path(__file__).parents[2] / "docs" / "kubernetes" / "secure-gateway-service.yaml"
    stage = StageConfig(key="acme/Development", address_id=ADDRESS, bind_host="10.20.1.10")
    assert shipped.read_text().endswith(
        kubernetes_manifest(stage, "acme-development", [8081, 8082])
    )


def test_refusal_log_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    async def flood() -> RefusalLog:
        refusals = RefusalLog(burst=5, window_s=0.2)
        where = ContextLogger(logging.getLogger("qanat.gateway.ports"), stage="dev", port=1)
        for n in range(2000):
            refusals.refused(where, "dev:1", f"10.77.3.{n % 7}", n + 1)
        await asyncio.sleep(0.3)  # let the window end and its summary be written
        refusals.close()
        return refusals

    with caplog.at_level(logging.WARNING):
        refusals = asyncio.run(flood())
    assert refusals.total == 2000
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6
    assert all("refused app connection from 10.77.3." in line for line in lines[:5])
    assert "refused 1995 more app connections" in lines[5]
    assert "7 source/port pairs" in lines[5]


def _cli(argv: list[str]) -> int:
    # Straight to the subcommand: main() would reconfigure the root logger.
    from qanat.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args))


def test_qanat_hosts_and_add_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage_file = str(tmp_path / "stages.toml")
    common = ["--stage-file", stage_file]
    with pytest.raises(ConfigError, match="'allow' must list"):
        _cli(["gateway", "add-stage", "--name", "acme/dev", "--bind", "10.77.1.1", *common])
    assert _cli(["gateway", "add-stage", "--name", "acme/dev", "--bind", "10.77.1.1",
                 "--allow", "10.77.1.0/24", *common]) == 0  # fmt: skip
    assert _cli(["gateway", "add-stage", "--name", "acme/prod", *common]) == 0
    capsys.readouterr()
    assert _cli(["hosts", "--stage", "dev", *common]) == 0
    assert capsys.readouterr().out == "10.77.1.1 secure-gateway\n"
    assert _cli(["hosts", "--stage", "acme/prod", *common]) == 0
    assert capsys.readouterr().out == "127.0.0.1 secure-gateway\n"
    assert (
        _cli(["hosts", "--stage", "dev", "--format", "kubernetes", "--port", "8081", *common]) == 0
    )
    assert "namespace: dev\n" in capsys.readouterr().out
    stages = load_stage_file(Path(stage_file))
    assert sorted(s.allow_cidrs for s in stages.values()) == [("10.77.1.0/24",), LOOPBACK_ALLOW]
