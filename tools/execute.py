"""Execute notebooks in place, top to bottom in a fresh kernel, as nbval will re-run them.

    python tools/execute.py chapters/01_what_is_a_generative_model.ipynb [...]

Runs each notebook from its own folder with progress bars off (TQDM_DISABLE=1) and the
thread count the tests use (GENBOOK_THREADS, default 2), and prints how long it took.
Then it writes the numbers that the Markdown quotes from the values the run recorded
(`tools/prose.py sync`), so that the text always shows this run's numbers.
`make execute` calls this for every chapter; the committed outputs come from it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prose  # noqa: E402


def execute(path: Path, timeout: int = 1800) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("GENBOOK_THREADS", "2")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    # Keep the committed notebooks small and free of machine-specific metadata.
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv:
        seconds = execute(Path(name))
        changes = prose.sync(Path(name))
        print(f"{name}: executed in {seconds:.1f} s; {changes} quoted number(s) or caption(s) rewritten", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
