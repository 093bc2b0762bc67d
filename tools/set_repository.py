"""Point the book at another GitHub repository or branch (for a fork).

    python tools/set_repository.py OWNER/REPO [BRANCH]

Rewrites, in one go, every place that names the repository: `repository.url` and
`repository.branch` in _config.yml (the Binder, Colab, edit and issue buttons), the
address from which each notebook's Colab set-up cell fetches the helper module (in the
notebooks and in CONTRIBUTING.md), and the site's address, https://OWNER.github.io/REPO/
(`html.baseurl` in _config.yml, and the notebooks' citation links to its references page).
The notebooks' outputs are untouched.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAW = re.compile(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[\w./-]+?(?=\")")
SITE = re.compile(r"https://[\w-]+\.github\.io/[\w.-]+/")


def main(argv: list[str], root: Path = ROOT) -> int:
    if not 1 <= len(argv) <= 2 or argv[0].count("/") != 1:
        print(__doc__, file=sys.stderr)
        return 2
    owner_repo, branch = argv[0], (argv[1] if len(argv) == 2 else "main")
    config = root / "_config.yml"
    text = config.read_text()
    text = re.sub(r"(?m)^(  url: )https://github\.com/\S+$", rf"\1https://github.com/{owner_repo}", text)
    text = re.sub(r"(?m)^(  branch: )\S+$", rf"\g<1>{branch}", text)
    owner, repo = owner_repo.split("/")
    site = f"https://{owner.lower()}.github.io/{repo}/"
    text = re.sub(r"(?m)^(  baseurl: )\S+$", rf"\g<1>{site}", text)
    config.write_text(text)
    raw = f"https://raw.githubusercontent.com/{owner_repo}/{branch}"
    changed = 0
    notebooks = sorted((root / "chapters").glob("[0-9][0-9]_*.ipynb")) + sorted((root / "chapters").glob("[A-Z]_*.ipynb"))
    for path in notebooks + [root / "CONTRIBUTING.md"]:
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text())
            for cell in nb["cells"]:
                src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                new = SITE.sub(site, RAW.sub(raw, src))
                if new != src:
                    cell["source"] = new.splitlines(keepends=True)
                    changed += 1
            path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        else:
            path.write_text(RAW.sub(raw, path.read_text()))
    print(f"Repository set to {owner_repo} on branch {branch}; {changed} notebook cell(s) updated.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
