"""Test-run plumbing: the notebooks' run times and peak memory, at the end of `make test`.

nbval turns each notebook into one test item per code cell; this sums their durations
(kernel start-up included) per notebook, and after every cell reads the kernel's peak
resident memory (VmHWM, exact, on Linux). It prints the table, slowest first, keeps it in
_build/notebook-times.md, and fails the run when a kernel's peak passes Binder's 2 GB.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

BINDER_LIMIT_MB = 2048
_SECONDS: dict[str, float] = defaultdict(float)
_PEAK_MB: dict[str, float] = {}
_FAILED: set[str] = set()


def _kernel_peak_mb() -> float | None:
    """Largest VmHWM among this process's ipykernel children (None off Linux)."""
    try:
        import psutil
        peaks = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "ipykernel" not in " ".join(child.cmdline()):
                    continue
                status = Path(f"/proc/{child.pid}/status").read_text()
            except (psutil.Error, OSError):
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return max(peaks) if peaks else None
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
            peak = _kernel_peak_mb()
            if peak is not None:
                _PEAK_MB[path] = max(peak, _PEAK_MB.get(path, 0.0))


def _over_limit() -> list[str]:
    return [nb for nb, mb in _PEAK_MB.items() if mb > BINDER_LIMIT_MB]


@pytest.hookimpl
def pytest_terminal_summary(terminalreporter):
    if not _SECONDS:
        return
    rows = sorted(_SECONDS.items(), key=lambda kv: -kv[1])
    lines = ["| notebook | seconds | peak kernel memory (MB) | result |", "| --- | ---: | ---: | --- |"]
    for nb, s in rows:
        mb = f"{_PEAK_MB[nb]:.0f}" if nb in _PEAK_MB else "n/a"
        result = "FAILED" if nb in _FAILED else ("over 2 GB" if nb in _over_limit() else "passed")
        lines.append(f"| {nb} | {s:.1f} | {mb} | {result} |")
    lines.append(f"| total | {sum(_SECONDS.values()):.1f} | | |")
    terminalreporter.section("notebook run times, slowest first")
    for line in lines:
        terminalreporter.write_line(line)
    for nb in _over_limit():
        terminalreporter.write_line(f"{nb}: kernel peaked at {_PEAK_MB[nb]:.0f} MB, over Binder's "
                                    f"{BINDER_LIMIT_MB} MB (see CONTRIBUTING.md, Memory)", red=True)
    out = Path(__file__).parent / "_build" / "notebook-times.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Notebook run times and peak memory under nbval\n\n" + "\n".join(lines) + "\n")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _over_limit() and session.exitstatus == 0:
        session.exitstatus = 1
