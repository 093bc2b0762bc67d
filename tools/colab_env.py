"""What a reader gets in Google Colab, rebuilt on this machine (used by tests/test_colab.py).

Colab comes with torch, torchvision, NumPy, SciPy, pandas, Matplotlib, seaborn,
scikit-learn, tqdm and ipykernel (and pip), and with nothing else that the book uses: no
myst-nb, no nbval, no `names`. A chapter that runs here, in a virtualenv holding exactly
those distributions and their dependencies, with `google.colab` imported at kernel start
and no network but PyPI, runs in Colab.

Installing torch again takes minutes and gigabytes, so the virtualenv is made with
`python -m venv` (no system site packages, no pip of its own) and its site-packages is
filled with symbolic links to the files that the main .venv installed for exactly the
dependency closure of COLAB_PREINSTALLED: each distribution's requirements, with their
environment markers evaluated, and the extras that a requirement asks for followed
(torch asks for `cuda-toolkit[cublas,...]`), but no optional extra of the distributions
themselves. Which files belong to which distribution comes from each one's RECORD.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections import defaultdict
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The fake `google.colab` package (a folder to put on PYTHONPATH).
STUB = ROOT / "tools" / "colab_stub"

#: What Colab has preinstalled that the book uses: pip, for `%pip install`, and ipywidgets,
#: which Colab also has and without which `tqdm.auto` warns on stderr.
COLAB_PREINSTALLED = ["torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "seaborn",
                      "scikit-learn", "tqdm", "ipykernel", "ipywidgets", "pip"]
#: Modules that the book's own tooling has and Colab lacks: each must fail to import there.
NOT_IN_COLAB = ["myst_nb", "myst_parser", "nbval", "jupyter_book", "names", "pytest"]


def _key(name: str) -> str:
    from packaging.utils import canonicalize_name
    return canonicalize_name(name)


def closure(seeds=COLAB_PREINSTALLED) -> dict:
    """The installed distributions (name -> Distribution) that `pip install seeds` would need."""
    from packaging.requirements import Requirement
    installed = {_key(d.metadata["Name"]): d for d in metadata.distributions()}
    found: dict = {}
    done: set = set()
    todo = [(_key(s), "") for s in seeds]  # (distribution, extra asked for; "" for none)
    while todo:
        name, extra = todo.pop()
        if (name, extra) in done:
            continue
        done.add((name, extra))
        if name not in installed:
            raise LookupError(f"{name} is required but not installed in {sys.prefix}")
        found[name] = installed[name]
        for line in installed[name].requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": extra}):
                continue
            # A requirement without an extra marker is already taken with extra == "".
            if extra and not (req.marker and "extra" in str(req.marker)):
                continue
            todo += [(_key(req.name), "")] + [(_key(req.name), _key(e)) for e in req.extras]
    return found


def _files(dist) -> set[tuple[str, ...]]:
    """A distribution's files inside site-packages, as path parts (scripts in bin/ left out)."""
    return {tuple(p.parts) for p in dist.files or [] if p.parts and p.parts[0] != ".."}


def _link_tree(src: Path, dst: Path, wanted: set, foreign: set, depth: int = 0) -> int:
    """Link into `dst` the `wanted` paths below `src`, one whole folder at a time where no
    other distribution (`foreign`) has files in it; returns the number of links made."""
    mine, theirs = defaultdict(set), defaultdict(set)
    for p in wanted:
        mine[p[depth]].add(p)
    for p in foreign:
        if len(p) > depth:
            theirs[p[depth]].add(p)
    links = 0
    for head, paths in mine.items():
        is_file = any(len(p) == depth + 1 for p in paths)
        if is_file or not theirs.get(head):
            if (src / head).exists() and not (dst / head).exists():
                (dst / head).symlink_to(src / head)
                links += 1
        else:  # a folder shared with a distribution Colab lacks (a namespace package): go down
            (dst / head).mkdir(exist_ok=True)
            links += _link_tree(src / head, dst / head, paths, theirs[head], depth + 1)
    return links


def site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def build(dest: Path, seeds=COLAB_PREINSTALLED) -> Path:
    """A fresh virtualenv at `dest` with only `seeds` and their dependencies; returns its python."""
    venv.EnvBuilder(clear=True, with_pip=False, system_site_packages=False, symlinks=True).create(dest)
    src = Path(metadata.distribution("pip").locate_file(""))  # the main venv's site-packages
    wanted_dists = closure(seeds)
    wanted, foreign = set(), set()
    for name, dist in ((_key(d.metadata["Name"]), d) for d in metadata.distributions()):
        (wanted if name in wanted_dists else foreign).update(_files(dist))
    foreign -= wanted
    _link_tree(src, site_packages(dest), wanted, foreign)
    # `%pip install` must never replace a linked distribution: uninstalling it would delete
    # the main venv's files through the links. Pinned here, pip fails instead (loudly).
    (dest / "constraints.txt").write_text("".join(
        f"{d.metadata['Name']}=={d.version}\n" for d in wanted_dists.values()))
    return dest / "bin" / "python"


def kernel_env(python: Path, serve: Path) -> dict:
    """The environment of a Colab kernel: the fake google.colab on the path, the main venv
    out of it, the test run's settings, and `serve` (see tools/colab_stub) for the downloads."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GENBOOK_DATA", "PYTHONHOME", "JUPYTER_PATH")}
    main_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != main_bin]
    env.update({
        "PATH": os.pathsep.join([str(python.parent)] + path),
        "PYTHONPATH": str(STUB),
        "PYTHONNOUSERSITE": "1",  # nothing from ~/.local
        "COLAB_STUB_SERVE": str(serve),
        "TQDM_DISABLE": "1",
        "GENBOOK_THREADS": os.environ.get("GENBOOK_THREADS", "2"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CONSTRAINT": str(python.parent.parent / "constraints.txt"),  # see build()
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    return env


def raw_base() -> str:
    """Where Colab's set-up cell downloads from: raw.githubusercontent.com for _config.yml's repository."""
    import yaml
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    owner_repo = config["repository"]["url"].rstrip("/").split("github.com/")[1]
    return f"https://raw.githubusercontent.com/{owner_repo}/{config['repository']['branch']}"


def write_serve_map(path: Path) -> Path:
    """The files the fake raw.githubusercontent.com may hand out: those git tracks (a file
    that is not committed is not on GitHub either), read from the working tree."""
    try:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                                 capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # no git (an exported copy): every file
        tracked = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    path.write_text(json.dumps({"base": raw_base(), "root": str(ROOT),
                                "files": sorted(f for f in tracked if f)}))
    return path


def kernelspec(jupyter_path: Path, python: Path, env: dict, name: str = "colab") -> str:
    """A kernelspec under `jupyter_path` that starts ipykernel in the Colab venv after importing
    google.colab, as Colab's own kernel does; returns its name. (run_notebook passes the
    kernel's whole environment when it starts it, so `env` may be empty.)"""
    spec = jupyter_path / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-c",
                 "import google.colab; from ipykernel import kernelapp; kernelapp.launch_new_instance()",
                 "-f", "{connection_file}"],
        "display_name": "Colab (simulated)", "language": "python", "env": env,
    }, indent=1))
    return name


def imports(source: str) -> str:
    """The top-level import statements of a code cell's source (IPython magics left out)."""
    import ast
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return ""
    return "\n".join(ast.get_source_segment("\n".join(lines), node) for node in tree.body
                     if isinstance(node, (ast.Import, ast.ImportFrom)))


def run_notebook(path: Path, work: Path, python: Path, env: dict, whole: bool = True):
    """Run the notebook at `path` as Colab would: alone in the empty folder `work`, in a kernel
    of the venv of `python` with environment `env`, top to bottom (or, unless `whole`, up to
    and including its second code cell, the imports, then every later top-level import
    statement in one cell). Returns (executed notebook, the
    error (nbclient's CellExecutionError, DeadKernelError, ...) or None, seconds)."""
    import shutil
    import time

    import nbformat
    from nbclient import NotebookClient

    work.mkdir(parents=True)
    shutil.copy(path, work / path.name)
    # Colab would download Fashion-MNIST into ./data (genbook.data_root() outside a clone);
    # here torchvision's download has no network, so ./data is the checkout's data/, which
    # holds the same checked files and the book's evaluation classifier.
    (work / "data").symlink_to(ROOT / "data", target_is_directory=True)
    jupyter_path = work.parent / "jupyter"
    kernel = kernelspec(jupyter_path, python, {})
    nb = nbformat.read(work / path.name, as_version=4)
    if not whole:
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        later = "\n".join(imports(nb.cells[i].source) for i in code[2:])
        nb.cells = nb.cells[: code[1] + 1]
        if later.strip():  # an import further down breaks in Colab just the same
            nb.cells.append(nbformat.v4.new_code_cell("# Every later import of the chapter\n" + later))
    # nbclient finds the kernelspec on JUPYTER_PATH, in this process's environment.
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(jupyter_path)
    client = NotebookClient(nb, kernel_name=kernel, timeout=1200, startup_timeout=120,
                            resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute(env=env)  # the kernel's whole environment (see kernel_env)
    except Exception as exc:  # CellExecutionError; a dead kernel or a cell timeout too
        error = exc
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    return nb, error, time.perf_counter() - start


if __name__ == "__main__":  # python tools/colab_env.py DEST: build one to look at
    import time
    t = time.perf_counter()
    print(build(Path(sys.argv[1])), f"{time.perf_counter() - t:.1f} s")
