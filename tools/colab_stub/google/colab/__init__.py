"""A stand-in for Colab's `google.colab`, for tests/test_colab.py (see tools/colab_env.py).

The test's kernel imports it at start, as Colab's does, so `"google.colab" in sys.modules`
holds in the notebook. Importing it also installs a urllib opener that plays
raw.githubusercontent.com from the checkout: a URL under the repository's raw address
(`base`) for a file git tracks is answered with that file of the working tree; every other
http(s) URL raises, so a notebook that downloads anything else fails loudly. The map comes
from the JSON file named by COLAB_STUB_SERVE: {"base": ..., "root": ..., "files": [...]}.
`google/` has no __init__.py, so it stays a namespace package like the real one.
"""
import email
import email.utils
import json
import os
import urllib.error
import urllib.request
import urllib.response
from pathlib import Path

SIMULATED = True  # how a test can tell this stub from the real module


class CheckoutHandler(urllib.request.BaseHandler):
    handler_order = 100  # before urllib's own HTTP(S) handlers

    def __init__(self, base: str, root: str, files):
        self.base, self.root, self.files = base.rstrip("/") + "/", Path(root), set(files)

    def local_path(self, url: str) -> Path:
        """The checkout's file for `url`; raises URLError for anything Colab could not fetch."""
        if not url.startswith(self.base):
            raise urllib.error.URLError(
                f"simulated Colab: no network here, and {url} is not under {self.base}")
        rel = url[len(self.base):].split("?")[0]
        if rel not in self.files:
            # Not tracked by git: GitHub would answer 404 Not Found.
            raise urllib.error.HTTPError(url, 404, f"simulated Colab: {rel} is not in the repository",
                                         None, None)
        return self.root / rel

    def _open(self, req):
        path = self.local_path(req.full_url)
        headers = email.message_from_string(
            f"Content-Length: {path.stat().st_size}\nContent-Type: application/octet-stream\n"
            f"Last-Modified: {email.utils.formatdate(path.stat().st_mtime, usegmt=True)}\n")
        response = urllib.response.addinfourl(open(path, "rb"), headers, req.full_url, 200)
        response.msg = "OK"  # urllib's HTTPErrorProcessor reads it
        return response

    http_open = https_open = _open


def install(spec_file=None):
    """Route urllib through the checkout, with the map from `spec_file` (or COLAB_STUB_SERVE)."""
    spec_file = spec_file or os.environ.get("COLAB_STUB_SERVE")
    if not spec_file:
        raise RuntimeError("simulated Colab: COLAB_STUB_SERVE names no map of the files to serve")
    spec = json.loads(Path(spec_file).read_text())
    handler = CheckoutHandler(spec["base"], spec["root"], spec["files"])
    urllib.request.install_opener(urllib.request.build_opener(handler))
    return handler


if os.environ.get("COLAB_STUB_SERVE"):
    install()
