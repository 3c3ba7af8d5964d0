"""The stage file is written with a correct TOML escaper (issue 12, bug 4).

``qanat gateway add-stage --name 'a"b'`` used to write ``name = "a"b"``,
which the gateway then refused to load.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qanat.cli import main
from qanat.gateway.stages import load_stage_file, stage_entry, toml_string


@given(st.text())
def test_any_string_round_trips_through_tomllib(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}\n") == {"v": text}


@given(
    st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.text() | st.lists(st.text()))
)
def test_a_stage_entry_round_trips(fields: dict[str, str | list[str]]) -> None:
    assert tomllib.loads(stage_entry(fields)) == {"stage": [fields]}


@pytest.mark.parametrize("name", ['a"b', "back\\slash", "new\nline", "tab\there", "é ü 中"])
def test_add_stage_with_an_awkward_name_writes_a_loadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    stage_file = tmp_path / "stages.toml"
    args = ["gateway", "add-stage", "--data-dir", str(tmp_path), "--stage-file", str(stage_file)]
    assert main([*args, "--name", "plain"]) == 0
    assert main([*args, "--name", name]) == 0
    capsys.readouterr()
    stages = load_stage_file(stage_file)
    assert sorted(s.key for s in stages.values()) == sorted(["plain", name])
