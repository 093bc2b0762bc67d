"""Run every notebook's code as a plain script on whatever accelerator is present (CUDA, MPS).

    python tools/device_check.py [chapters/NN_name.ipynb ...]

For checking that the chapters run unchanged on a GPU machine that has PyTorch but not the
book's Jupyter stack: it needs only the standard library, torch and the chapters' own
imports. Magics and shell lines (`%pip`, `!cmd`) are dropped; if `myst_nb` is missing, a
stand-in `glue` that does nothing is put on the path. Plots go to a non-interactive
backend. Prints one line per notebook: device, seconds, and OK or the error's last line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def to_script(nb_path: Path) -> str:
    cells = json.loads(nb_path.read_text())["cells"]
    lines = ["import matplotlib", "matplotlib.use('Agg')"]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for line in src.splitlines():
            stripped = line.lstrip()
            if stripped.startswith(("%", "!")):
                line = line[: len(line) - len(stripped)] + "pass  # " + stripped
            lines.append(line)
        lines.append("")
    lines.append("import torch, genbook; print('DEVICE', genbook.pick_device(), 'SECONDS', round(genbook.elapsed(), 1))")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    notebooks = [Path(a) for a in argv] or (sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
                                            + sorted((ROOT / "chapters").glob("[A-Z]_*.ipynb")))
    stub = Path(tempfile.mkdtemp())
    try:
        import myst_nb  # noqa: F401
    except ImportError:
        (stub / "myst_nb").mkdir()
        (stub / "myst_nb" / "__init__.py").write_text("def glue(name, value, display=True):\n    return None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(stub), os.environ.get("PYTHONPATH")])),
               TQDM_DISABLE="1", MPLBACKEND="Agg")
    failures = 0
    for nb in notebooks:
        script = stub / (nb.stem + ".py")
        script.write_text(to_script(nb))
        start = time.perf_counter()
        run = subprocess.run([sys.executable, str(script)], cwd=nb.parent, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode == 0:
            device = next((l for l in run.stdout.splitlines() if l.startswith("DEVICE")), "DEVICE ?")
            print(f"{nb.name}: OK in {seconds:.0f} s ({device})", flush=True)
        else:
            failures += 1
            print(f"{nb.name}: FAILED after {seconds:.0f} s\n{run.stderr[-2500:]}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
