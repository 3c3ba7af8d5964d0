"""Step results of ``qanat diagnose`` / ``qanat probe`` and how they are shown.

A step either passes (``detail`` says what was seen) or fails (``detail`` says
what was seen and what it most likely means, ``fix`` what to do). The JSON
form is an interface for automation; its keys are stable::

    {"command": "diagnose", "target": "...", "ok": false,
     "steps": [{"name": "dns", "ok": true, "ms": 1.2, "detail": "...", "fix": ""}],
     "not_run": ["upgrade", "token"]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any


class StepFailed(Exception):
    """Raised inside a step: what went wrong (and why, most likely) and the fix."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass(frozen=True, slots=True)
class StepResult:
    name: str
    ok: bool
    ms: float
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "ms": round(self.ms, 3),
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass
class Report:
    """The ordered results of one run; ``on_step`` sees each as it is added."""

    command: str
    target: str
    steps: list[StepResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    on_step: Callable[[StepResult], None] | None = None

    def add(self, result: StepResult) -> None:
        self.steps.append(result)
        if self.on_step is not None:
            self.on_step(result)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "target": self.target,
            "ok": self.ok,
            "steps": [s.to_json() for s in self.steps],
            "not_run": list(self.not_run),
        }


# -- human output ---------------------------------------------------------------

_GREEN, _RED, _DIM, _BOLD, _RESET = "\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m"


def use_colour(stream: IO[str], choice: str = "auto") -> bool:
    """Colour when asked, or on a terminal unless NO_COLOR is set (no-color.org)."""
    if choice in ("always", "never"):
        return choice == "always"
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class HumanPrinter:
    """Prints each step as it completes, then a summary line."""

    def __init__(self, stream: IO[str], colour: bool, width: int = 14) -> None:
        self.stream = stream
        self.colour = colour
        self.width = width

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour else text

    def header(self, text: str) -> None:
        print(self._c(_BOLD, text), file=self.stream, flush=True)

    def step(self, result: StepResult) -> None:
        mark = self._c(_GREEN, "PASS") if result.ok else self._c(_RED, "FAIL")
        timing = self._c(_DIM, f"{result.ms:9.1f} ms")
        print(
            f"  {mark}  {result.name:<{self.width}} {timing}  {result.detail}",
            file=self.stream,
            flush=True,
        )
        if not result.ok and result.fix:
            pad = " " * (2 + 4 + 2)
            print(f"{pad}{self._c(_BOLD, 'fix:')} {result.fix}", file=self.stream, flush=True)

    def summary(self, report: Report) -> None:
        if report.not_run:
            names = "not run (an earlier step failed): " + ", ".join(report.not_run)
            print(f"  {self._c(_DIM, names)}", file=self.stream)
        failed = [s.name for s in report.steps if not s.ok]
        if failed:
            text = f"{len(failed)} of {len(report.steps)} steps failed: {', '.join(failed)}"
            print(self._c(_RED, text), file=self.stream, flush=True)
        else:
            print(self._c(_GREEN, f"all {len(report.steps)} steps passed"), file=self.stream)


def print_json(report: Report, stream: IO[str]) -> None:
    json.dump(report.to_json(), stream, indent=2)
    stream.write("\n")
    stream.flush()
