"""Colab as a test, not a hope: every chapter runs where Colab's reader runs it.

For each chapter this builds what Colab gives (tools/colab_env.py): a fresh virtualenv with
only Colab's preinstalled packages (torch, torchvision, NumPy, SciPy, pandas, Matplotlib,
seaborn, scikit-learn, tqdm, ipykernel and their dependencies; no myst-nb, nbval or
`names`), a kernel that imports `google.colab` at start (tools/colab_stub), the notebook
alone in an empty folder, raw.githubusercontent.com played from the checkout, and PyPI for
`%pip install`. Then it runs the notebook top to bottom with nbclient and wants no error.

By default every chapter runs its set-up cell, its imports and every later import statement
(what breaks in Colab when the book leans on something Colab lacks), and two chapters run
whole (WHOLE: the first whose set-up cell `%pip install`s a package, the first that loads
Fashion-MNIST); COLAB_TEST=full runs every chapter whole (about as long again as nbval's run
of the book; the GitHub workflow sets it). The executed notebooks go to _build/colab/.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab_env  # noqa: E402

import prose  # noqa: E402

NOTEBOOKS = prose.book_notebooks(ROOT)  # the chapters, then the appendix
FULL = os.environ.get("COLAB_TEST", "").lower() == "full"


def _code(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


# Whole by default: the first chapter whose set-up cell `%pip install`s what Colab lacks, and
# the first that loads Fashion-MNIST (from ./data, where genbook looks outside a clone).
WHOLE = {next((p.name for p in NOTEBOOKS if "%pip install" in _code(p)[0]), None),
         next((p.name for p in NOTEBOOKS if any("load_fashion_mnist" in c for c in _code(p))), None)} - {None}
OUT = ROOT / "_build" / "colab"


@pytest.fixture(scope="module")
def serve_map(tmp_path_factory):
    """The files the fake raw.githubusercontent.com hands out (git-tracked, working tree)."""
    return colab_env.write_serve_map(tmp_path_factory.mktemp("colab") / "serve.json")


@pytest.fixture
def colab(tmp_path, serve_map):
    """A fresh Colab-like virtualenv (about 1 s: links, not copies) and its kernel's environment.

    Fresh for every chapter, so that a chapter that needs `names` and does not
    `%pip install` it fails even when an earlier chapter installed it.
    """
    python = colab_env.build(tmp_path / "venv")
    return python, colab_env.kernel_env(python, serve_map)


def _stub_module():
    """tools/colab_stub/google/colab/__init__.py, loaded under another name (no opener installed)."""
    spec = importlib.util.spec_from_file_location(
        "colab_stub_under_test", colab_env.STUB / "google" / "colab" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fake_github_serves_tracked_files_of_the_checkout_and_refuses_the_rest(serve_map, monkeypatch):
    stub = _stub_module()
    handler = stub.CheckoutHandler(**json.loads(serve_map.read_text()))
    opener = urllib.request.build_opener(handler)  # not installed: this process keeps its network
    base = colab_env.raw_base()
    with opener.open(f"{base}/chapters/genbook.py") as r:
        assert r.read() == (ROOT / "chapters" / "genbook.py").read_bytes()
    assert int(r.headers["Content-Length"]) == (ROOT / "chapters" / "genbook.py").stat().st_size
    with pytest.raises(urllib.error.URLError, match="no network"):
        opener.open("https://download.pytorch.org/whl/cpu")
    with pytest.raises(urllib.error.URLError, match="no network"):  # another repository
        opener.open(base.replace("/main", "/other-branch") + "/chapters/genbook.py")
    for missing in ("chapters/no_such_file.py", "../../etc/passwd", "data/FashionMNIST/raw/t10k-labels-idx1-ubyte"):
        with pytest.raises(urllib.error.HTTPError, match="not in the repository"):
            opener.open(f"{base}/{missing}")
    monkeypatch.delenv("COLAB_STUB_SERVE", raising=False)
    with pytest.raises(RuntimeError, match="COLAB_STUB_SERVE"):  # no map: refuse to start
        stub.install()


def test_the_colab_env_has_colab_packages_and_nothing_else(colab):
    python, env = colab
    script = "\n".join([
        "import importlib, sys, urllib.request, urllib.error",
        "assert 'google.colab' not in sys.modules",
        "import google.colab; assert google.colab.SIMULATED",
        *[f"import {m}" for m in ("torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib",
                                  "seaborn", "sklearn", "tqdm", "ipykernel", "pip")],
        "assert torch.__file__.startswith(sys.prefix), torch.__file__",
        "missing = []",
        f"for m in {colab_env.NOT_IN_COLAB!r}:",
        "    try: importlib.import_module(m)",
        "    except ImportError: missing.append(m)",
        "print('MISSING', ' '.join(missing))",
        f"urllib.request.urlretrieve({colab_env.raw_base() + '/assets/house.mplstyle'!r}, 'house.mplstyle')",
        "try: urllib.request.urlopen('https://pypi.org/simple/names/')",
        "except urllib.error.URLError as e: print('REFUSED', e)",
    ])
    work = Path(env["COLAB_STUB_SERVE"]).parent / "env-check"
    work.mkdir(exist_ok=True)
    run = subprocess.run([str(python), "-c", script], env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    missing = run.stdout.split("MISSING", 1)[1].splitlines()[0].split()
    assert missing == colab_env.NOT_IN_COLAB, f"importable in the Colab env, and not in Colab: " \
                                              f"{sorted(set(colab_env.NOT_IN_COLAB) - set(missing))}"
    assert (work / "house.mplstyle").read_bytes() == (ROOT / "assets" / "house.mplstyle").read_bytes()
    assert "REFUSED" in run.stdout, "the simulated Colab let urllib reach the network"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_runs_in_colab(path, colab, tmp_path):
    python, env = colab
    whole = FULL or path.name in WHOLE
    what = "whole" if whole else "set-up and imports"
    nb, error, seconds = colab_env.run_notebook(path, tmp_path / "content", python, env, whole)
    OUT.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, OUT / path.name)
    if error is not None:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the kernel's traceback colours
        pytest.fail(f"{path.name} ({what}) fails in Colab ({type(error).__name__}); executed copy in "
                    f"{OUT / path.name}:\n"
                    f"{message[-2500:]}", pytrace=False)
    # The set-up cell took its Colab branch: it fetched the helper and the style.
    assert (tmp_path / "content" / "genbook.py").read_bytes() == (ROOT / "chapters" / "genbook.py").read_bytes()
    assert (tmp_path / "content" / "house.mplstyle").exists()
    print(f"{path.name}: {what} ran in the simulated Colab in {seconds:.0f} s")
