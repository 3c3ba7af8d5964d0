"""Fixtures of the end-to-end tests: qanat processes that never outlive a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.processes import ProcessGroup


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.close()
    left = [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]
    assert not left, f"processes left behind: {left}"
