"""requirements.txt installs on every supported platform, checked against PyPI without installing.

Supported: Linux x86_64 and aarch64 (glibc 2.28 or later), macOS 14 or later on Apple silicon,
and Windows x86_64, each with Python 3.11 and 3.12. For each of these eight targets the test

1. evaluates the environment markers of requirements.txt itself, for the target (pip cannot:
   with --platform and --python-version it still evaluates markers against the interpreter
   that runs it, see https://github.com/pypa/pip/issues/11664), and keeps the selected pins;
2. asks pip, with --dry-run, which file it would install for each pin on that target
   (--only-binary=:all: with the target's exact wheel tags), so that a pin with no wheel
   for the target fails here, naming the pin;
3. reads the metadata of every file pip chose (pip's --report) and checks that every
   dependency the target needs, markers and extras evaluated for the target, is pinned
   for it at a version that satisfies the dependency: the pins are a complete list there
   too (colorama on Windows, appnope on macOS, ...).

It needs PyPI (or the index in BOOK_PYPI_INDEX), and fails with a message when it cannot be
reached. It takes about a minute: the sixteen pip calls run in parallel threads.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from functools import cache
from pathlib import Path

import pytest
from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
INDEX = os.environ.get("BOOK_PYPI_INDEX", "https://pypi.org/simple")
PIP_TIMEOUT_S = 300  # one pip call; it is retried once when it fails for another reason than a missing file

# Packages that PyPI has only as an sdist: pip may use the sdist (it only reads its metadata here),
# and test_sdist_only_pins_are_pure_python checks that each builds a py3-none-any wheel, which
# installs on every platform.
SDIST_ONLY = {"names"}

PYTHONS = {"3.11": "3.11.9", "3.12": "3.12.7"}

_MANYLINUX = [f"manylinux_2_{minor}" for minor in range(28, 16, -1)]  # torch's wheels need glibc 2.28
PLATFORMS = {
    "linux-x86_64": {
        "markers": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"},
        "tags": [f"{m}_x86_64" for m in _MANYLINUX]
        + [f"manylinux_2_{minor}_x86_64" for minor in (12, 5)]
        + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"],
    },
    "linux-aarch64": {
        "markers": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix"},
        "tags": [f"{m}_aarch64" for m in _MANYLINUX] + ["manylinux2014_aarch64"],
    },
    "macos-arm64": {  # torch's wheels need macOS 14
        "markers": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"},
        "tags": list(tags.mac_platforms((14, 0), "arm64")),
    },
    "windows-amd64": {
        "markers": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"},
        "tags": ["win_amd64"],
    },
}
TARGETS = [(platform, python) for platform in PLATFORMS for python in PYTHONS]


def marker_environment(platform: str, python: str) -> dict[str, str]:
    """Every PEP 508 marker variable, for the target (nothing is taken from this machine)."""
    full = PYTHONS[python]
    return {
        **PLATFORMS[platform]["markers"],
        "implementation_name": "cpython",
        "implementation_version": full,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_version": "",
        "python_full_version": full,
        "python_version": python,
        "extra": "",
    }


def read_requirements() -> list[Requirement]:
    reqs = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            reqs.append(Requirement(line))
    return reqs


def selected_pins(platform: str, python: str) -> dict[str, Requirement]:
    """The requirement lines whose markers hold on the target, by canonical name (markers dropped)."""
    env = marker_environment(platform, python)
    selected = {}
    for req in read_requirements():
        if req.marker is None or req.marker.evaluate(env):
            pin = Requirement(str(req))
            pin.marker = None
            selected[canonicalize_name(req.name)] = pin
    return selected


def _pin_version(req: Requirement) -> str:
    (spec,) = req.specifier
    return spec.version


def _project_url(name: str) -> str:
    return f"{INDEX.rstrip('/')}/{name}/"


def _fetch_project(name: str) -> dict:
    """PyPI's simple-API page (JSON, PEP 691) of one project; one retry."""
    request = urllib.request.Request(_project_url(name),
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    for attempt in range(2):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)
        except Exception:
            if attempt:
                raise
            time.sleep(3)


def _release_files(page: dict, version: str, page_url: str) -> list[dict]:
    """The files of one release, as the simple API lists them (requires-python and yanked kept)."""
    files = []
    for f in page["files"]:
        try:
            if f["filename"].endswith(".whl"):
                file_version = parse_wheel_filename(f["filename"])[1]
            else:
                file_version = parse_sdist_filename(f["filename"])[1]
        except (ValueError, InvalidVersion):
            continue  # .exe, .egg, or a name that no installer reads
        if file_version == Version(version):
            files.append({**f, "url": urllib.parse.urljoin(page_url, f["url"])})
    return files


class _IndexHandler(http.server.BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}

    def do_GET(self):
        body = self.pages.get(self.path.strip("/").split("/")[-1])
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def index():
    """The pinned releases' files, read from PyPI once and served to pip from 127.0.0.1.

    pip would otherwise fetch every project's whole page once per target (numpy's alone is 2 MB),
    which is most of its time. The files themselves still come from PyPI's file host. Fails, does
    not skip, when PyPI cannot be reached: these tests need it.
    """
    pins = {canonicalize_name(r.name): _pin_version(r) for r in read_requirements()}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            pages = dict(zip(pins, pool.map(_fetch_project, pins)))
    except Exception as e:
        pytest.fail(f"{INDEX} cannot be reached ({e!r}), and tests/test_platforms.py needs it to check that "
                    "requirements.txt installs on every platform (BOOK_PYPI_INDEX names another index that "
                    "holds every platform's wheels)", pytrace=False)
    handler = type("Handler", (_IndexHandler,), {"pages": {}})
    portable = set()
    for name, page in pages.items():
        files = _release_files(page, pins[name], _project_url(name))
        assert files, f"{name}=={pins[name]} is not on {INDEX}"
        handler.pages[name] = json.dumps({"meta": {"api-version": "1.1"}, "name": name, "files": files}).encode()
        wheels = [f["filename"] for f in files if f["filename"].endswith(".whl")]
        if all(w.endswith("-none-any.whl") for w in wheels) and (wheels or name in SDIST_ONLY):
            portable.add(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/simple", "portable": portable}
    finally:
        server.shutdown()
        server.server_close()


def _pip(args: list[str], index_url: str, timeout: int = PIP_TIMEOUT_S) -> subprocess.CompletedProcess:
    """python -m pip, free of this machine's pip configuration, with one retry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    command = [sys.executable, "-m", "pip", *args, "--isolated", "--disable-pip-version-check",
               "--no-input", "--index-url", index_url, "--timeout", "60", "--retries", "3"]
    result = None
    for attempt in range(2):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            result = subprocess.CompletedProcess(command, 124, e.stdout or "", f"pip ran past {timeout} s\n{e.stderr or ''}")
            continue
        if result.returncode == 0 or "No matching distribution found" in result.stderr:
            break  # success, or a real answer that a retry would not change
        time.sleep(5)
    return result


@cache
def _pip_supports_fast_deps() -> bool:
    """pip rejects an --use-feature it does not know (exit status 2); without it pip downloads whole wheels."""
    command = [sys.executable, "-m", "pip", "install", "--use-feature=fast-deps", "--help"]
    return subprocess.run(command, capture_output=True, text=True).returncode == 0


def _dry_run(index_url: str, platform: str, python: str, pins: list[Requirement], workdir: Path) -> tuple[str, dict]:
    """pip's choice of file for each pin on the target: (error text or '', {name: report item})."""
    workdir.mkdir(parents=True)
    (workdir / "requirements.txt").write_text("".join(f"{p}\n" for p in pins))
    abi = "cp" + python.replace(".", "")
    args = ["install", "--dry-run", "--no-deps", "--ignore-installed", "--no-cache-dir", "--quiet",
            "--only-binary=:all:", *[f"--no-binary={name}" for name in sorted(SDIST_ONLY)],
            "--target", str(workdir / "target"), "--report", str(workdir / "report.json"),
            "--python-version", PYTHONS[python], "--implementation", "cp", "--abi", abi,
            *[f"--platform={tag}" for tag in PLATFORMS.get(platform, {"tags": ["any"]})["tags"]],
            "-r", str(workdir / "requirements.txt")]
    if platform != "any" and _pip_supports_fast_deps():
        args.append("--use-feature=fast-deps")
    result = _pip(args, index_url)
    if result.returncode != 0:
        return f"pip exited with {result.returncode}:\n{result.stderr[-4000:]}", {}
    report = json.loads((workdir / "report.json").read_text())
    return "", {canonicalize_name(item["metadata"]["name"]): item for item in report["install"]}


@pytest.fixture(scope="module")
def resolutions(index, tmp_path_factory):
    """pip's choices for every target, from ten pip calls run in parallel.

    A release whose files are all pure-Python wheels (or a pure-Python sdist, see SDIST_ONLY) installs
    the same file on every platform, so those pins are checked once per Python version, for all
    platforms together; the others (compiled code: torch, numpy, ...) once per target. For the latter
    pip reads each wheel's metadata with HTTP range requests (--use-feature=fast-deps) rather than
    downloading gigabytes of CUDA libraries.
    """
    root = tmp_path_factory.mktemp("platforms")
    portable = index["portable"]
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        for python in PYTHONS:
            pins = {}
            for platform in PLATFORMS:
                pins.update((n, p) for n, p in selected_pins(platform, python).items() if n in portable)
            jobs[("any", python)] = pool.submit(_dry_run, index["url"], "any", python, list(pins.values()),
                                                root / f"any-{python}")
        for platform, python in TARGETS:
            pins = [p for n, p in selected_pins(platform, python).items() if n not in portable]
            jobs[(platform, python)] = pool.submit(_dry_run, index["url"], platform, python, pins,
                                                   root / f"{platform}-{python}")
    results = {}
    for platform, python in TARGETS:
        errors, items = [], {}
        for key in ((platform, python), ("any", python)):
            error, found = jobs[key].result()
            if error:
                errors.append(error)
            items.update(found)
        wanted = selected_pins(platform, python)
        results[(platform, python)] = ("\n".join(errors), {n: item for n, item in items.items() if n in wanted})
    return results


def test_requirements_are_exact_pins_with_known_markers():
    allowed = {"sys_platform", "platform_system", "platform_machine", "os_name", "python_version"}
    names = []
    for req in read_requirements():
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"{req} is not one exact pin"
        assert not req.extras and not req.url, f"{req}: extras and URLs are not pins"
        if req.marker is not None:
            used = set(re.findall(r"[a-z_]+", re.sub(r'"[^"]*"|\'[^\']*\'', "", str(req.marker)))) - {"and", "or", "in", "not"}
            assert used <= allowed, f"{req}: markers may use only {sorted(allowed)}"
        names.append(canonicalize_name(req.name))
    assert len(names) == len(set(names)), "a package is pinned twice"
    for platform, python in TARGETS:
        pins = selected_pins(platform, python)
        assert _pin_version(pins["torch"]) == "2.14.1" and _pin_version(pins["torchvision"]) == "0.29.1"


@pytest.mark.parametrize("platform,python", TARGETS, ids=[f"{p}-py{v}" for p, v in TARGETS])
def test_every_pin_has_a_file_for_the_target(resolutions, platform, python):
    error, items = resolutions[(platform, python)]
    assert not error, (f"pip install -r requirements.txt would fail on {platform} with Python {python}: a pin "
                       f"has no wheel there (give it an environment marker, or change the version)\n{error}")
    pins = selected_pins(platform, python)
    assert set(items) == set(pins), f"pip chose {sorted(set(items) ^ set(pins))} differently from the pins"
    for name, item in items.items():
        assert item["metadata"]["version"] == _pin_version(pins[name]), f"{name}: pip chose {item['metadata']['version']}"
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert filename.endswith(".whl") or name in SDIST_ONLY, f"{name}: pip would build {filename}"


@pytest.mark.parametrize("platform,python", TARGETS, ids=[f"{p}-py{v}" for p, v in TARGETS])
def test_the_pins_are_complete_for_the_target(resolutions, platform, python):
    """Every dependency of every pinned package, for this target, is pinned at a version it accepts."""
    error, items = resolutions[(platform, python)]
    if error:
        pytest.fail(f"no resolution to check (see test_every_pin_has_a_file_for_the_target[{platform}-py{python}])",
                    pytrace=False)
    pins = selected_pins(platform, python)
    env = marker_environment(platform, python)
    problems = []
    todo, seen = [(name, "") for name in pins], set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in items[name]["metadata"].get("requires_dist", []):
            dep = Requirement(line)
            if dep.marker is not None and not dep.marker.evaluate({**env, "extra": extra}):
                continue
            dep_name = canonicalize_name(dep.name)
            if dep_name not in pins:
                problems.append(f"{name}{f'[{extra}]' if extra else ''} needs {dep}, which is not pinned for this target")
                continue
            if not dep.specifier.contains(_pin_version(pins[dep_name]), prereleases=True):
                problems.append(f"{name} needs {dep}, but {pins[dep_name]} is pinned")
            todo.append((dep_name, ""))
            todo.extend((dep_name, canonicalize_name(x)) for x in dep.extras)
    assert not problems, f"requirements.txt on {platform} with Python {python}:\n" + "\n".join(sorted(set(problems)))


def test_sdist_only_pins_are_pure_python(index, tmp_path):
    """A pin PyPI has only as an sdist must build a py3-none-any wheel: that installs everywhere."""
    pins = {canonicalize_name(r.name): r for r in read_requirements()}
    for name in sorted(SDIST_ONLY):
        assert name in pins, f"{name} is in SDIST_ONLY but not in requirements.txt"
        result = _pip(["wheel", "--no-deps", "--no-cache-dir", "--quiet", f"--no-binary={name}",
                       "--wheel-dir", str(tmp_path), str(pins[name])], index["url"])
        assert result.returncode == 0, f"{pins[name]}: its sdist does not build:\n{result.stderr[-3000:]}"
        wheels = list(tmp_path.glob("*.whl"))
        assert len(wheels) == 1 and wheels[0].name.endswith("-none-any.whl"), \
            f"{pins[name]} builds {[w.name for w in wheels]}, not a pure-Python wheel"
        wheels[0].unlink()
