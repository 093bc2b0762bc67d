"""A throwaway JupyterLab server on localhost, serving the checkout (tests/test_jupyterlab.py).

It is the main .venv's JupyterLab (pinned in requirements.txt, as Binder's is), with its
config, data, runtime, settings and workspace folders in a temporary folder so that nothing
of the machine's own Jupyter set-up leaks in, and these user settings:

* the notebook's windowing mode 'none': JupyterLab otherwise renders only the cells near
  the viewport, and a test reading the text would see a fraction of it;
* no news and no update check (they would reach the network and pop up a notification);
* no autosave, and the checkpoint JupyterLab makes when it opens a notebook kept in the
  temporary folder: the server writes nothing into the checkout.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(root: Path = ROOT, timeout: float = 120):
    """Start JupyterLab on 127.0.0.1 and a free port; yield (base URL, token). Stops it after."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="jupyterlab-") as tmp:
        tmp = Path(tmp)
        for name, value in SETTINGS.items():
            (tmp / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "settings" / name).write_text(json.dumps(value))
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
        env.update(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
                   JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_PLATFORM_DIRS="1")
        port = _free_port()
        log = open(tmp / "server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
             f"--ServerApp.root_dir={root}",
             f"--LabApp.user_settings_dir={tmp / 'settings'}",
             f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
             f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"],  # absolute: one folder
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp / "server.log").read_text()[-3000:])
                time.sleep(0.5)
            yield url, token
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()


def shutdown_kernels(url: str, token: str) -> int:
    """End every session (and its kernel) the server holds; returns how many there were."""
    sessions = _api(url, token, "GET", "/api/sessions")
    for session in sessions:
        _api(url, token, "DELETE", f"/api/sessions/{session['id']}")
    return len(sessions)


def _api(url: str, token: str, method: str, path: str):
    req = urllib.request.Request(f"{url}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def wait_for_kernel(url: str, token: str, path: str, timeout: float = 90) -> bool:
    """Wait until the notebook at `path` (relative to the root) has a kernel that is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for session in _api(url, token, "GET", "/api/sessions"):
            if session["path"] == path and (session.get("kernel") or {}).get("execution_state") == "idle":
                return True
        time.sleep(0.5)
    return False
