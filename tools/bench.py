"""Time every notebook fresh, one at a time: wall seconds and the kernel's peak memory.

    python tools/bench.py chapters/*.ipynb      (or: make bench)

Each notebook runs in a fresh kernel started by a child process, exactly as nbval runs it,
and nothing is written back. The kernel's peak resident memory is read from the child's
resource usage once the kernel has exited: the total, including the file-backed pages of
shared libraries, which vary by a few hundred MB with the page cache (`make test` reports
the kernel's own memory separately; see conftest.py). The table goes to _build/bench.md
and stdout.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINDER_LIMIT_MB = 2048

CHILD = r"""
import os, resource, sys, time
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
NotebookClient(nb, timeout=3600, kernel_name="python3",
               resources={"metadata": {"path": os.path.dirname(path)}}).execute()
seconds = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"RESULT {seconds:.2f} {peak_kb / 1024:.0f}")
"""


def bench(path: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            _, seconds, peak = line.split()
            return float(seconds), float(peak)
    raise RuntimeError(f"{path} failed:\n{out.stderr[-3000:]}")


def main(argv: list[str]) -> int:
    import torch
    threads = os.environ.get("GENBOOK_THREADS", str(torch.get_num_threads()))
    header = [
        "# Notebook benchmark",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__} with {threads} CPU thread(s) (GENBOOK_THREADS); "
        f"load average before the run {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| notebook | wall seconds | peak kernel memory (MB) | under Binder's 2 GB |",
        "| --- | ---: | ---: | --- |",
    ]
    rows, failed = [], False
    for name in argv:
        try:
            seconds, peak = bench(Path(name))
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            rows.append(f"| {name} | failed | | |")
            failed = True
            continue
        rows.append(f"| {name} | {seconds:.1f} | {peak:.0f} | {'yes' if peak < BINDER_LIMIT_MB else 'NO'} |")
        print(rows[-1], flush=True)
    text = "\n".join(header + rows) + "\n"
    out = ROOT / "_build" / "bench.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
