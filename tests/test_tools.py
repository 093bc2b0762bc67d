"""The maintainer tools: pointing the book at a fork, and turning notebooks into scripts."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import device_check  # noqa: E402
import set_repository  # noqa: E402


def test_set_repository_rewrites_every_place_that_names_the_repository(tmp_path):
    (tmp_path / "chapters").mkdir()
    shutil.copy(ROOT / "_config.yml", tmp_path)
    shutil.copy(ROOT / "CONTRIBUTING.md", tmp_path)
    first = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))[0]
    shutil.copy(first, tmp_path / "chapters")
    assert set_repository.main(["someone/fork-of-book", "draft"], root=tmp_path) == 0
    config = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert config["repository"]["url"] == "https://github.com/someone/fork-of-book"
    assert config["repository"]["branch"] == "draft"
    assert config["html"]["baseurl"] == "https://someone.github.io/fork-of-book/"
    raw = "https://raw.githubusercontent.com/someone/fork-of-book/draft"
    assert f'BOOK = "{raw}"' in (tmp_path / "chapters" / first.name).read_text().replace('\\"', '"')
    assert raw in (tmp_path / "CONTRIBUTING.md").read_text()
    notebook = (tmp_path / "chapters" / first.name).read_text()
    assert "https://someone.github.io/fork-of-book/references.html#" in notebook
    assert "genmodels-book.github.io" not in notebook
    # everything else in the notebook is untouched
    before = (ROOT / "chapters" / first.name).read_text()
    after = (tmp_path / "chapters" / first.name).read_text()
    assert len(before.splitlines()) == len(after.splitlines())


def test_device_check_turns_a_notebook_into_a_runnable_script():
    first = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))[0]
    script = device_check.to_script(first)
    compile(script, first.name, "exec")
    assert "genbook.setup(seed=0)" in script


def test_prose_check_finds_control_characters(tmp_path):
    """'\\bar' typed into a Python string becomes a backspace and 'ar': the check must see it."""
    import nbformat
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import prose
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 9. Title\n\nThe mean $\\sqrt{\bar\\alpha_t}$.")]
    path = tmp_path / "09_example.ipynb"
    nbformat.write(nb, path)
    assert any("control characters ['0x8']" in problem for problem in prose.problems(path))
    nb.cells[0].source = "# 9. Title\n\nThe mean $\\sqrt{\\bar\\alpha_t}$."
    nbformat.write(nb, path)
    assert not any("control characters" in problem for problem in prose.problems(path))
