"""bench/report.py judges issue 13's targets: qanat against the Go peer and
OpenSSH of the same run, and qanat's memory per connection against 8 KiB.

Every test also holds a verdict that an inverted comparison would flip, so
none of them passes with ``>=`` and ``<=`` swapped.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report

DIRECT_RTT_P50 = 100.0


def tunnel(
    bulk: float, rtt: float, connect: float, gateway_kib: float, connector_kib: float
) -> dict[str, Any]:
    """One path's results as bench/run.py records them (only what is judged)."""
    return {
        "status": "ok",
        "bulk": {"MBps_median": bulk},
        "rtt": {"p50_us": rtt, "p99_us": rtt * 3},
        "connect": {"p50_us": connect, "p99_us": connect * 3},
        "idle": {"server_KiB_per_conn": gateway_kib, "client_KiB_per_conn": connector_kib},
    }


def run(**paths: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"text vs reference": verdict dict}`` for one run's paths."""
    all_paths = {"direct": tunnel(2000, DIRECT_RTT_P50, 150, 0, 0), **paths}
    verdicts = report.evaluate(all_paths)
    assert len(verdicts) == len(report.ISSUE13)
    return {f"{v['key']} vs {v['reference'] or v['factor']}": v for v in verdicts}


def verdicts(by_name: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    return {name: v["verdict"] for name, v in by_name.items()}


SSH = tunnel(bulk=500, rtt=290, connect=570, gateway_kib=34, connector_kib=34)
GO = tunnel(bulk=200, rtt=600, connect=1300, gateway_kib=50, connector_kib=50)


def test_qanat_ahead_of_go_passes() -> None:
    # Stream 1.5x Go and 0.6x ssh; 100 us less overhead than Go; faster connect.
    qanat = tunnel(bulk=300, rtt=500, connect=1200, gateway_kib=4.4, connector_kib=3.2)
    got = run(ssh=SSH, qanat=qanat, go=GO)
    assert verdicts(got) == {
        "bulk_MBps vs go": "pass",
        "bulk_MBps vs ssh": "pass",
        "rtt_overhead_p50_us vs go": "pass",
        "connect_p50_us vs go": "pass",
        "gateway_KiB_per_conn vs 8": "pass",
        "connector_KiB_per_conn vs 8": "pass",
    }
    bulk_go = got["bulk_MBps vs go"]
    assert bulk_go["value"] == 300
    assert bulk_go["reference_value"] == 200
    assert bulk_go["bound"] == pytest.approx(260)
    assert bulk_go["ratio"] == pytest.approx(1.5)
    rtt = got["rtt_overhead_p50_us vs go"]
    assert (rtt["value"], rtt["reference_value"]) == (400, 500)
    assert rtt["ratio"] == pytest.approx(0.8)


def test_qanat_behind_go_misses() -> None:
    # Stream 1.2x Go (< 1.3x) and 0.48x ssh (< 0.5x); more overhead and a
    # slower connect than Go; 9 KiB per connection on both ends.
    qanat = tunnel(bulk=240, rtt=750, connect=1400, gateway_kib=9, connector_kib=9)
    got = run(ssh=SSH, qanat=qanat, go=GO)
    assert verdicts(got) == {
        "bulk_MBps vs go": "miss",
        "bulk_MBps vs ssh": "miss",
        "rtt_overhead_p50_us vs go": "miss",
        "connect_p50_us vs go": "miss",
        "gateway_KiB_per_conn vs 8": "miss",
        "connector_KiB_per_conn vs 8": "miss",
    }
    assert got["connect_p50_us vs go"]["ratio"] == pytest.approx(1400 / 1300)


def test_mixed_run_judges_each_target_on_its_own() -> None:
    # Wins the stream, loses the round trip: both directions in one run.
    qanat = tunnel(bulk=400, rtt=800, connect=1000, gateway_kib=9, connector_kib=3)
    got = verdicts(run(ssh=SSH, qanat=qanat, go=GO))
    assert got["bulk_MBps vs go"] == "pass"
    assert got["rtt_overhead_p50_us vs go"] == "miss"
    assert got["connect_p50_us vs go"] == "pass"
    assert got["gateway_KiB_per_conn vs 8"] == "miss"
    assert got["connector_KiB_per_conn vs 8"] == "pass"


@pytest.mark.parametrize(
    "go",
    [
        None,
        {"status": "not available", "reason": "no Go toolchain", "short": "go"},
        {"status": "failed", "reason": "RuntimeError: boom", "short": "go"},
    ],
    ids=["not run", "not available", "failed"],
)
def test_missing_go_path_is_not_applicable_never_a_pass(go: dict[str, Any] | None) -> None:
    qanat = tunnel(bulk=300, rtt=500, connect=1200, gateway_kib=4.4, connector_kib=3.2)
    paths = {"ssh": SSH, "qanat": qanat} if go is None else {"ssh": SSH, "qanat": qanat, "go": go}
    got = run(**paths)
    for name in ("bulk_MBps vs go", "rtt_overhead_p50_us vs go", "connect_p50_us vs go"):
        assert got[name]["verdict"] is None
        assert got[name]["reference_value"] is None
        assert got[name]["ratio"] is None
        assert got[name]["reason"].startswith("go ")
    # qanat's own figures are still there, and the targets that do not need
    # Go are still judged.
    assert got["bulk_MBps vs go"]["value"] == 300
    assert got["bulk_MBps vs ssh"]["verdict"] == "pass"
    assert got["gateway_KiB_per_conn vs 8"]["verdict"] == "pass"
    block = report.render_issue13(list(got.values()))
    assert "1.36x" not in block
    assert "one stream: 300 MB/s = n/a Go (>= 1.3x): n/a (go " in block
    assert "one stream: 300 MB/s = 0.60x ssh (>= 0.5x): pass" in block


def test_missing_qanat_is_not_applicable() -> None:
    got = run(
        ssh=SSH, go=GO, qanat={"status": "not available", "reason": "no CLI", "short": "qanat"}
    )
    assert all(v["verdict"] is None for v in got.values())
    assert all(v["reason"] == "qanat not available" for v in got.values())
    # The references' figures are still recorded.
    assert got["bulk_MBps vs go"]["reference_value"] == 200
    # The same references with a qanat that loses: misses, so None above
    # was not a comparison's result.
    losing = tunnel(bulk=1, rtt=10_000, connect=10_000, gateway_kib=99, connector_kib=99)
    assert set(verdicts(run(ssh=SSH, go=GO, qanat=losing)).values()) == {"miss"}


def test_ratio_exactly_at_the_bound_passes_and_just_beyond_misses() -> None:
    ssh = tunnel(bulk=520, rtt=290, connect=570, gateway_kib=34, connector_kib=34)
    # 260 MB/s is 1.3x Go's 200 and 0.5x ssh's 520; the overhead and the
    # connect equal Go's; 8 KiB on both ends.
    at = tunnel(bulk=260, rtt=600, connect=1300, gateway_kib=8, connector_kib=8)
    got = run(ssh=ssh, qanat=at, go=GO)
    assert set(verdicts(got).values()) == {"pass"}
    assert got["bulk_MBps vs go"]["ratio"] == pytest.approx(1.3)
    assert got["bulk_MBps vs ssh"]["ratio"] == pytest.approx(0.5)
    assert got["connect_p50_us vs go"]["ratio"] == pytest.approx(1.0)

    beyond = tunnel(bulk=259.9, rtt=600.1, connect=1300.1, gateway_kib=8.01, connector_kib=8.01)
    assert set(verdicts(run(ssh=ssh, qanat=beyond, go=GO)).values()) == {"miss"}


def test_nan_figures_are_not_applicable() -> None:
    nan = math.nan
    qanat = tunnel(bulk=nan, rtt=nan, connect=1200, gateway_kib=nan, connector_kib=3.2)
    got = run(ssh=SSH, qanat=qanat, go=GO)
    assert got["bulk_MBps vs go"]["verdict"] is None
    assert got["bulk_MBps vs ssh"]["verdict"] is None
    assert got["rtt_overhead_p50_us vs go"]["verdict"] is None
    assert got["gateway_KiB_per_conn vs 8"]["verdict"] is None
    assert got["bulk_MBps vs go"]["value"] is None
    # The figures that are numbers are judged.
    assert got["connect_p50_us vs go"]["verdict"] == "pass"
    assert got["connector_KiB_per_conn vs 8"]["verdict"] == "pass"

    # A nan in the reference is as unusable as one in qanat's figures.
    go_nan = tunnel(bulk=nan, rtt=600, connect=nan, gateway_kib=50, connector_kib=50)
    qanat = tunnel(bulk=300, rtt=800, connect=1200, gateway_kib=4, connector_kib=3)
    got = run(ssh=SSH, qanat=qanat, go=go_nan)
    assert got["bulk_MBps vs go"]["verdict"] is None
    assert got["connect_p50_us vs go"]["verdict"] is None
    assert got["bulk_MBps vs go"]["reference_value"] is None
    assert got["rtt_overhead_p50_us vs go"]["verdict"] == "miss"


def test_no_direct_round_trip_leaves_the_overhead_not_applicable() -> None:
    qanat = tunnel(bulk=300, rtt=500, connect=1200, gateway_kib=4, connector_kib=3)
    paths = {"ssh": SSH, "qanat": qanat, "go": GO}
    got = {v["key"] + " " + str(v["reference"]): v for v in report.evaluate(paths)}
    assert got["rtt_overhead_p50_us go"]["verdict"] is None
    assert got["rtt_overhead_p50_us go"]["reason"] == "no direct round trip"
    assert got["connect_p50_us go"]["verdict"] == "pass"


def test_phase_error_is_not_applicable_and_named() -> None:
    qanat = tunnel(bulk=300, rtt=500, connect=1200, gateway_kib=4, connector_kib=3)
    qanat["connect"] = {"error": "PhaseTimeout: 30 s"}
    got = run(ssh=SSH, qanat=qanat, go=GO)
    assert got["connect_p50_us vs go"]["verdict"] is None
    assert got["connect_p50_us vs go"]["reason"] == "qanat connect: error"
    assert got["bulk_MBps vs go"]["verdict"] == "pass"


def test_block_lines() -> None:
    qanat = tunnel(bulk=272, rtt=800, connect=1300, gateway_kib=4.4, connector_kib=3.2)
    got = run(ssh=tunnel(425, 290, 570, 34, 34), qanat=qanat, go=GO)
    lines = report.render_issue13(list(got.values())).splitlines()
    assert lines[0].startswith(report.ISSUE13_TITLE)
    assert "CPU share" in lines[0]
    assert lines[1:] == [
        "  one stream: 272 MB/s = 1.36x Go (>= 1.3x): pass",
        "  one stream: 272 MB/s = 0.64x ssh (>= 0.5x): pass",
        "  round trip added to direct p50: +700 us vs Go +500 us = 1.40x (<= Go): miss",
        "  connect + 1st round trip p50: 1300 us vs Go 1300 us = 1.00x (<= Go): pass",
        "  gateway memory per open conn: 4.4 KiB (<= 8 KiB): pass",
        "  connector memory per open conn: 3.2 KiB (<= 8 KiB): pass",
    ]


def test_absolute_table_still_renders_with_the_connector_figure() -> None:
    qanat = tunnel(bulk=300, rtt=500, connect=1200, gateway_kib=4.4, connector_kib=3.2)
    paths = {"direct": tunnel(2000, DIRECT_RTT_P50, 150, 0, 0), "qanat": qanat, "go": GO}
    report.evaluate(paths)
    assert paths["qanat"]["headline"]["connector_KiB_per_conn"] == pytest.approx(3.2)
    assert paths["qanat"]["verdicts"]["bulk_MBps"] == "pass"
    assert paths["go"]["verdicts"]["bulk_MBps"] == "miss"
    table = report.render({"paths": paths})
    assert "300 pass" in table
    assert "200 miss" in table
