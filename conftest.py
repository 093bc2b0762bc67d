"""Test-run plumbing: the notebooks' run times, slowest first, at the end of `make test`.

nbval turns each notebook into one test item per code cell; this sums their durations
(kernel start-up included) per notebook, prints the table and keeps it in
_build/notebook-times.md.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

_SECONDS: dict[str, float] = defaultdict(float)
_FAILED: set[str] = set()


@pytest.hookimpl
def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _SECONDS[path] += report.duration
        if report.failed:
            _FAILED.add(path)


@pytest.hookimpl
def pytest_terminal_summary(terminalreporter):
    if not _SECONDS:
        return
    rows = sorted(_SECONDS.items(), key=lambda kv: -kv[1])
    lines = ["| notebook | seconds | result |", "| --- | ---: | --- |"]
    lines += [f"| {nb} | {s:.1f} | {'FAILED' if nb in _FAILED else 'passed'} |" for nb, s in rows]
    lines.append(f"| total | {sum(_SECONDS.values()):.1f} | |")
    terminalreporter.section("notebook run times, slowest first")
    for line in lines:
        terminalreporter.write_line(line)
    out = Path(__file__).parent / "_build" / "notebook-times.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Notebook run times under nbval\n\n" + "\n".join(lines) + "\n")
