"""glibc's malloc thresholds, fixed by the long-running commands (qanat.runtime).

Each case runs in a fresh interpreter, since a process' malloc settings are
its own. What is observed is where a 512 KiB block comes from: with glibc's
defaults (threshold 128 KiB) it is a mapping of its own (``mallinfo2``'s
``hblkhd``); tuned, it comes from the heap.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

libc = ctypes.CDLL(None)
pytestmark = pytest.mark.skipif(
    not hasattr(libc, "mallinfo2"), reason="needs glibc 2.33+ (mallinfo2)"
)

PROBE = r"""
import asyncio, ctypes, json, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped_for_a_block():
    before = libc.mallinfo2().hblkhd
    block = bytearray(512 * 1024)
    grown = libc.mallinfo2().hblkhd - before
    del block
    return grown

how = sys.argv[1]
note = ""
if how == "tune":
    from qanat.runtime import tune_malloc
    note = tune_malloc()
    grown = mapped_for_a_block()
elif how == "run":
    from qanat.runtime import run
    async def main():
        return mapped_for_a_block()
    grown = run(main())
else:
    grown = mapped_for_a_block()
print(json.dumps({"mapped": grown, "note": note}))
"""


def probe(how: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, how],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_glibc_defaults_map_a_512k_block_of_its_own():
    assert int(probe("none")["mapped"]) >= 512 * 1024  # type: ignore[call-overload]


def test_tuned_a_512k_block_comes_from_the_heap():
    result = probe("tune")
    assert result["mapped"] == 0
    assert "mmap threshold 1024 KiB" in str(result["note"])


def test_the_event_loop_runner_tunes_malloc():
    assert probe("run")["mapped"] == 0


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_the_operators_malloc_variables_win(name):
    # glibc reads these at start; tune_malloc() must not override them.
    result = probe("tune", **{name: "200000"})
    assert "left as the environment sets it" in str(result["note"])
    if name == "MALLOC_MMAP_THRESHOLD_":
        assert int(result["mapped"]) >= 512 * 1024  # type: ignore[call-overload]
