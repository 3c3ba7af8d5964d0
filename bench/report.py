"""Targets, pass/miss verdicts and the stdout table of the path benchmark.

Two kinds of target: absolute ones (``TARGETS``, every tunnel path against a
fixed limit) and issue 13's (``ISSUE13``, qanat against a reference path of
the same run, or against a limit of its own). A target whose figure or
reference is missing is judged ``None`` ("n/a"), never a pass.

Units: MB/s is 10^6 bytes per second; KiB is 1,024 bytes (the memory target
"50 KB per connection" is read as 50 KiB, the stricter of the two only by
2%); latencies are microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

PATH_ORDER = ("direct", "ssh", "qanat", "go")


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    op: str  # ">=" or "<="
    limit: float
    unit: str

    def judge(self, value: float | None) -> str | None:
        if value is None or math.isnan(value):
            return None
        ok = value >= self.limit if self.op == ">=" else value <= self.limit
        return "pass" if ok else "miss"

    def describe(self) -> str:
        return f"{self.text} {self.op} {self.limit:g} {self.unit}"


TARGETS = (
    Target("bulk_MBps", "one stream", ">=", 300, "MB/s"),
    Target("rtt_overhead_p50_us", "round-trip overhead over direct at p50", "<=", 150, "us"),
    Target("connect_p50_us", "connect + first round trip at p50", "<=", 1000, "us"),
    Target("gateway_KiB_per_conn", "gateway memory per open connection", "<=", 50, "KiB"),
)


@dataclass(frozen=True)
class RelativeTarget:
    """One issue 13 target: ``path``'s figure ``key`` against a bound.

    The bound is ``factor`` times ``reference``'s figure in the same run, or,
    without a reference, ``factor`` itself (a limit in ``unit``).
    """

    key: str  # a headline figure
    text: str
    op: Literal[">=", "<="]
    factor: float
    reference: str | None = None
    unit: str = ""
    path: str = "qanat"

    def bound(self, reference_value: float | None) -> float | None:
        if self.reference is None:
            return self.factor
        if reference_value is None or math.isnan(reference_value):
            return None
        return self.factor * reference_value

    def judge(self, value: float | None, reference_value: float | None) -> str | None:
        bound = self.bound(reference_value)
        if value is None or math.isnan(value) or bound is None:
            return None
        ok = value >= bound if self.op == ">=" else value <= bound
        return "pass" if ok else "miss"


ISSUE13 = (
    RelativeTarget("bulk_MBps", "one stream", ">=", 1.3, "go", "MB/s"),
    RelativeTarget("bulk_MBps", "one stream", ">=", 0.5, "ssh", "MB/s"),
    RelativeTarget("rtt_overhead_p50_us", "round trip added to direct p50", "<=", 1, "go", "us"),
    RelativeTarget("connect_p50_us", "connect + 1st round trip p50", "<=", 1, "go", "us"),
    RelativeTarget("gateway_KiB_per_conn", "gateway memory per open conn", "<=", 8, None, "KiB"),
    RelativeTarget(
        "connector_KiB_per_conn", "connector memory per open conn", "<=", 8, None, "KiB"
    ),
)

#: The phase each headline figure comes from (to name what is missing).
PHASE_OF = {
    "bulk_MBps": "bulk",
    "rtt_overhead_p50_us": "rtt",
    "connect_p50_us": "connect",
    "gateway_KiB_per_conn": "idle",
    "connector_KiB_per_conn": "idle",
}
#: How the verdict lines write each figure.
FIGURE_FMT = {
    "rtt_overhead_p50_us": "+.0f",
    "gateway_KiB_per_conn": ".1f",
    "connector_KiB_per_conn": ".1f",
}
#: How the verdict lines name a reference path.
REFERENCE_NAME = {"go": "Go", "ssh": "ssh"}


def _get(res: dict[str, Any], phase: str, key: str) -> float | None:
    value = res.get(phase, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def headline(res: dict[str, Any], direct_rtt_p50: float | None) -> dict[str, float | None]:
    """The figures the targets are about, for one path's results."""
    rtt = _get(res, "rtt", "p50_us")
    return {
        "bulk_MBps": _get(res, "bulk", "MBps_median"),
        "rtt_overhead_p50_us": (
            rtt - direct_rtt_p50 if rtt is not None and direct_rtt_p50 is not None else None
        ),
        "connect_p50_us": _get(res, "connect", "p50_us"),
        "gateway_KiB_per_conn": _get(res, "idle", "server_KiB_per_conn"),
        "connector_KiB_per_conn": _get(res, "idle", "client_KiB_per_conn"),
    }


def evaluate(paths: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``headline`` and ``verdicts`` to every tunnel path that ran, and
    return issue 13's verdicts (for the results' ``"issue13"``)."""
    direct = paths.get("direct", {})
    direct_p50 = _get(direct, "rtt", "p50_us") if direct.get("status") == "ok" else None
    for name, res in paths.items():
        if name == "direct" or res.get("status") != "ok":
            continue
        figures = headline(res, direct_p50)
        res["headline"] = figures
        res["verdicts"] = {t.key: t.judge(figures[t.key]) for t in TARGETS}
    return [judge_relative(t, paths) for t in ISSUE13]


def _figure(paths: dict[str, dict[str, Any]], name: str, key: str) -> tuple[float | None, str]:
    """One path's headline figure, or None and why there is none."""
    res = paths.get(name)
    if res is None:
        return None, f"{name} not run"
    if res.get("status") != "ok":
        return None, f"{name} {res.get('status', 'did not run')}"
    value = res.get("headline", {}).get(key)
    if isinstance(value, int | float) and not math.isnan(value):
        return float(value), ""
    phase = PHASE_OF.get(key, key)
    if "error" in res.get(phase, {}):
        return None, f"{name} {phase}: error"
    if key == "rtt_overhead_p50_us":
        direct = paths.get("direct", {})
        if direct.get("status") != "ok" or _get(direct, "rtt", "p50_us") is None:
            return None, "no direct round trip"
    return None, f"no {phase} figure for {name}"


def judge_relative(target: RelativeTarget, paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One issue 13 verdict: value, reference value, bound, ratio, verdict."""
    value, why = _figure(paths, target.path, target.key)
    reference_value: float | None = None
    if target.reference is not None:
        reference_value, why_ref = _figure(paths, target.reference, target.key)
        why = why or why_ref
    bound = target.bound(reference_value)
    ratio = None
    if value is not None and reference_value is not None and reference_value > 0:
        ratio = value / reference_value
    verdict = target.judge(value, reference_value)
    return {
        "key": target.key,
        "text": target.text,
        "path": target.path,
        "reference": target.reference,
        "op": target.op,
        "factor": target.factor,
        "unit": target.unit,
        "value": value,
        "reference_value": reference_value,
        "bound": bound,
        "ratio": ratio,
        "verdict": verdict,
        "reason": why if verdict is None else None,
    }


ISSUE13_TITLE = "qanat against the references (issue 13 targets)"


def _show(value: float | None, key: str, unit: str) -> str:
    return "n/a" if value is None else f"{format(value, FIGURE_FMT.get(key, '.0f'))} {unit}"


def render_issue13(verdicts: list[dict[str, Any]]) -> str:
    """The verdict block. run.py prints it just above the line with other
    processes' share of the CPU, which says how far to trust the verdicts."""
    lines = [f"{ISSUE13_TITLE}, this run; other processes' CPU share on the line below"]
    for v in verdicts:
        value = _show(v["value"], v["key"], v["unit"])
        verdict = v["verdict"] or f"n/a ({v['reason']})"
        ref = v["reference"]
        if ref is None:
            bound = f"{v['op']} {v['factor']:g} {v['unit']}"
            lines.append(f"  {v['text']}: {value} ({bound}): {verdict}")
            continue
        name = REFERENCE_NAME.get(ref, ref)
        ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        if v["factor"] == 1:
            ref_value = _show(v["reference_value"], v["key"], v["unit"])
            compared = f"{value} vs {name} {ref_value} = {ratio} ({v['op']} {name})"
        else:
            compared = f"{value} = {ratio} {name} ({v['op']} {v['factor']:g}x)"
        lines.append(f"  {v['text']}: {compared}: {verdict}")
    return "\n".join(lines)


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, fmt)


def _cell(res: dict[str, Any], phase: str, render: str) -> str:
    """One table cell: the figure, or the phase's error in short."""
    if res.get("status") != "ok":
        return "n/a"
    got = res.get(phase)
    if got is None:
        return "-"
    if "error" in got:
        return "error"
    return render


def _verdict(res: dict[str, Any], key: str) -> str:
    verdict = res.get("verdicts", {}).get(key)
    return f" {verdict}" if verdict else ""


def render(results: dict[str, Any]) -> str:
    paths: dict[str, dict[str, Any]] = results["paths"]
    names = [n for n in PATH_ORDER if n in paths]
    if not names:
        return ""
    head = ["metric", "target", *[paths[n].get("short", n) for n in names]]
    rows: list[list[str]] = [head]

    def row(label: str, target: str, cells: list[str]) -> None:
        rows.append([label, target, *cells])

    t = {x.key: x for x in TARGETS}
    row(
        "one stream, MB/s",
        ">= 300",
        [
            _cell(r, "bulk", _num(_get(r, "bulk", "MBps_median")) + _verdict(r, "bulk_MBps"))
            for r in (paths[n] for n in names)
        ],
    )
    row(
        "64 B round trip p50 / p99, us",
        "",
        [
            _cell(r, "rtt", f"{_num(_get(r, 'rtt', 'p50_us'))} / {_num(_get(r, 'rtt', 'p99_us'))}")
            for r in (paths[n] for n in names)
        ],
    )
    row(
        "  overhead over direct at p50, us",
        "<= 150",
        [
            "-"
            if n == "direct"
            else _cell(
                paths[n],
                "rtt",
                _fmt_signed(paths[n].get("headline", {}).get("rtt_overhead_p50_us"))
                + _verdict(paths[n], "rtt_overhead_p50_us"),
            )
            for n in names
        ],
    )
    row(
        "connect + 1st round trip p50 / p99, us",
        "<= 1000",
        [
            _cell(
                r,
                "connect",
                f"{_num(_get(r, 'connect', 'p50_us'))} / {_num(_get(r, 'connect', 'p99_us'))}"
                + _verdict(r, "connect_p50_us"),
            )
            for r in (paths[n] for n in names)
        ],
    )
    row(
        "gateway RSS per open conn, KiB",
        "<= 50",
        [
            "-"
            if n == "direct"
            else _cell(
                paths[n],
                "idle",
                _num(_get(paths[n], "idle", "server_KiB_per_conn"), ".1f")
                + _verdict(paths[n], "gateway_KiB_per_conn"),
            )
            for n in names
        ],
    )
    row(
        "connector RSS per open conn, KiB",
        "",
        [
            "-"
            if n == "direct"
            else _cell(paths[n], "idle", _num(_get(paths[n], "idle", "client_KiB_per_conn"), ".1f"))
            for n in names
        ],
    )
    for label, phase, unit in (
        ("gateway / connector CPU per MiB, us", "bulk", "MiB"),
        ("gateway / connector CPU per round trip, us", "rtt", "rt"),
        ("gateway / connector CPU per connect + round trip, us", "connect", "conn"),
    ):
        row(
            label,
            "",
            [
                "-"
                if n == "direct"
                else _cell(
                    paths[n],
                    phase,
                    f"{_num(_get(paths[n], phase, f'server_cpu_us_per_{unit}'))} / "
                    f"{_num(_get(paths[n], phase, f'client_cpu_us_per_{unit}'))}",
                )
                for n in names
            ],
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))

    notes = []
    for n in names:
        res = paths[n]
        if res.get("status") != "ok":
            notes.append(f"{n}: {res['status']} ({res.get('reason', '')})")
            continue
        notes.append(f"{n}: {res.get('label', n)}")
        for phase in ("bulk", "rtt", "connect", "idle"):
            err = res.get(phase, {}).get("error")
            if err:
                notes.append(f"  {n} {phase}: {err}")
    lines += [
        "",
        *notes,
        "",
        "targets (tunnel paths): " + "; ".join(x.describe() for x in t.values()),
    ]
    return "\n".join(lines)


def _fmt_signed(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.0f}"
