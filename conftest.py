"""Test-run plumbing: the notebooks' run times and peak memory, at the end of `make test`.

nbval turns each notebook into one test item per code cell; this sums their durations
(kernel start-up included) per notebook, and after every cell reads the kernel's memory
from /proc (Linux): its peak resident memory (VmHWM, exact) and how much of what is
resident now is file-backed (RssFile: the pages of torch's and other shared libraries that
the process has mapped). The file-backed part depends on the page cache, not on the
notebook: the same notebook measured 1583 MB in one virtualenv and 1858 MB in a freshly
installed copy of it, with the same anonymous memory. So the check is on the difference,
the kernel's own memory at its peak (an estimate: libraries mapped after the peak make it
slightly low), which must leave room under Binder's 2 GB for the Jupyter server.
It prints the table, slowest first, with each notebook's run-time budget (CONTRIBUTING.md,
Run time), keeps it in _build/notebook-times.md, and fails the run when a notebook's own
memory passes that line. A notebook over its budget is flagged, not failed: run times on a
shared 2-core machine vary by several per cent from run to run.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

BINDER_LIMIT_MB = 2048
SERVER_ALLOWANCE_MB = 200  # the Jupyter server beside the kernel
BUDGET_S = 180                     # seconds of strict nbval on the 2-core test machine
BUDGET_S_BY_PREFIX = {"06_": 240, "07_": 240}   # the chapters that train many GANs or a DCGAN
_SECONDS: dict[str, float] = defaultdict(float)
_PEAK_MB: dict[str, float] = {}     # VmHWM
_FILE_MB: dict[str, float] = {}     # RssFile when VmHWM was last read
_FAILED: set[str] = set()


def _kernel_memory_mb() -> tuple[float, float] | None:
    """(VmHWM, RssFile) in MB of this process's ipykernel child with the largest peak."""
    try:
        import psutil
        found = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "ipykernel" not in " ".join(child.cmdline()):
                    continue
                status = Path(f"/proc/{child.pid}/status").read_text()
            except (psutil.Error, OSError):
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            found.append((int(fields["VmHWM"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024))
        return max(found) if found else None
    except Exception:  # no psutil, no /proc: report nothing rather than fail
        return None


@pytest.hookimpl
def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _SECONDS[path] += report.duration
        if report.failed:
            _FAILED.add(path)
        if report.when == "call":
            memory = _kernel_memory_mb()
            if memory is not None:
                _PEAK_MB[path], _FILE_MB[path] = memory


def budget_s(nb: str) -> float:
    """The run-time budget of a notebook, from its file name."""
    name = Path(nb).name
    return next((s for prefix, s in BUDGET_S_BY_PREFIX.items() if name.startswith(prefix)), BUDGET_S)


def _own_mb(nb: str) -> float:
    return _PEAK_MB[nb] - _FILE_MB[nb]


def _over_limit() -> list[str]:
    return [nb for nb in _PEAK_MB if _own_mb(nb) > BINDER_LIMIT_MB - SERVER_ALLOWANCE_MB]


@pytest.hookimpl
def pytest_terminal_summary(terminalreporter):
    if not _SECONDS:
        return
    rows = sorted(_SECONDS.items(), key=lambda kv: -kv[1])
    lines = ["| notebook | seconds | budget | peak kernel memory (MB) | of which shared libraries | "
             "kernel's own memory at its peak | result |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for nb, s in rows:
        mb = (f"{_PEAK_MB[nb]:.0f} | {_FILE_MB[nb]:.0f} | {_own_mb(nb):.0f}" if nb in _PEAK_MB
              else "n/a | n/a | n/a")
        result = "FAILED" if nb in _FAILED else ("too much memory" if nb in _over_limit() else "passed")
        if s > budget_s(nb):
            result += ", over its time budget"
        lines.append(f"| {nb} | {s:.1f} | {budget_s(nb):.0f} | {mb} | {result} |")
    lines.append(f"| total | {sum(_SECONDS.values()):.1f} | | | | | |")
    terminalreporter.section("notebook run times, slowest first")
    for line in lines:
        terminalreporter.write_line(line)
    for nb in _over_limit():
        terminalreporter.write_line(
            f"{nb}: the kernel's own memory peaked at about {_own_mb(nb):.0f} MB, more than Binder's "
            f"{BINDER_LIMIT_MB} MB leaves beside the Jupyter server ({SERVER_ALLOWANCE_MB} MB): "
            "see CONTRIBUTING.md, Memory", red=True)
    out = Path(__file__).parent / "_build" / "notebook-times.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Notebook run times and peak memory under nbval\n\n" + "\n".join(lines) + "\n")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _over_limit() and session.exitstatus == 0:
        session.exitstatus = 1
