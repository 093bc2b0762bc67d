"""Binder builds its own environment from binder/: it must be the one the tests check."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalised, local tags like +cpu dropped)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)  # markers such as `; sys_platform == "linux"` allowed
            versions = [s.version for s in req.specifier if s.operator == "=="]
            if versions:
                pins[canonicalize_name(req.name)] = versions[0].split("+")[0]
    return pins


def test_binder_pins_the_tested_versions():
    tested, binder = _pins(ROOT / "requirements.txt"), _pins(ROOT / "binder" / "requirements.txt")
    # JupyterLab is the reader's interface on Binder, and tests/test_jupyterlab.py checks the
    # chapters in the version requirements.txt pins.
    assert "jupyterlab" in binder, "binder/requirements.txt must pin jupyterlab (Binder's interface)"
    differ = {name: (binder[name], tested.get(name)) for name in binder if binder[name] != tested.get(name)}
    assert not differ, f"binder/requirements.txt pins other versions than requirements.txt: {differ}"
