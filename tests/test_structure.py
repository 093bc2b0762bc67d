"""Structural checks of the committed notebooks and the project's set-up files.

These read the files as they are committed; nbval (run on chapters/ by `make test`)
re-executes the notebooks and compares their outputs.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import prose  # noqa: E402

CHAPTERS = ROOT / "chapters"
NOTEBOOKS = prose.book_notebooks(ROOT)
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
MAX_BYTES = 2_000_000
MACHINE_PATHS = [re.escape(str(ROOT)), r"/root/", r"/tmp/ipykernel", r"/home/[a-z_][a-z0-9_-]*/", r"C:\\\\Users"]


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _raw_base() -> str:
    owner_repo = CONFIG["repository"]["url"].rstrip("/").split("github.com/")[1]
    return f"https://raw.githubusercontent.com/{owner_repo}/{CONFIG['repository']['branch']}"


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request):
    path = request.param
    return path, nbformat.read(path, as_version=4)


def test_there_are_notebooks():
    assert NOTEBOOKS, "chapters/ holds no numbered notebooks"


def test_toc_lists_every_notebook_in_file_order():
    listed = [f for f in _toc_files(TOC) if f.startswith("chapters/")]
    on_disk = [f"chapters/{p.stem}" for p in NOTEBOOKS]
    assert listed == on_disk, f"_toc.yml lists {listed}, chapters/ holds {on_disk}"
    for f in _toc_files(TOC) + [TOC["root"]]:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"{f} in _toc.yml does not exist"


def test_notebook_is_valid_and_small(notebook):
    path, nb = notebook
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"


def test_notebook_ran_top_to_bottom_without_errors(notebook):
    path, nb = notebook
    cells = _code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cell(s) never executed"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts} are not 1..n"
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{path.name}: code cell {i + 1} has an error output"
            if out.output_type == "stream" and out.name == "stderr":
                assert "Warning" not in out.text and "Traceback" not in out.text, \
                    f"{path.name}: code cell {i + 1} prints a warning to stderr:\n{out.text[:300]}"


def test_notebook_has_no_machine_specific_paths(notebook):
    path, nb = notebook
    text = json.dumps(nb)
    for pattern in MACHINE_PATHS:
        assert not re.search(pattern, text), f"{path.name} mentions a machine-specific path ({pattern})"


def test_first_code_cell_sets_up_colab_and_seeds(notebook):
    path, nb = notebook
    first = _code_cells(nb)[0].source
    assert 'if "google.colab" in sys.modules' in first, f"{path.name}: first code cell lacks the Colab set-up"
    assert f'BOOK = "{_raw_base()}"' in first, \
        f"{path.name}: the Colab set-up cell must fetch from {_raw_base()} (tools/set_repository.py fixes it)"
    assert "genbook.setup(seed=" in first, f"{path.name}: the first code cell must seed everything"


def test_last_code_cell_records_the_run_time(notebook):
    path, nb = notebook
    last = _code_cells(nb)[-1]
    assert "genbook.elapsed()" in last.source, f"{path.name}: the last code cell must print genbook.elapsed()"
    assert "nbval-ignore-output" in last.metadata.get("tags", [])


def test_chapter_has_the_house_sections(notebook):
    path, nb = notebook
    md = _markdown(nb)
    assert re.match(r"# (\d+|[A-Z])\. ", nb.cells[0].source), f"{path.name}: the first cell must be '# N. Title'"
    for heading in ("## Objectives", "## Prerequisites", "## Summary", "## Exercises"):
        assert re.search(rf"^{heading}\s*$", md, re.M), f"{path.name}: no '{heading}' section"
    exercises = md[md.index("## Exercises"):]
    n_exercises = len(prose.EXERCISE_HEADING.findall(exercises))
    n_solutions = exercises.count("<details>\n<summary>Solution</summary>")
    assert n_exercises >= 3, f"{path.name}: {n_exercises} exercises, want at least 3"
    assert n_solutions == n_exercises, f"{path.name}: {n_solutions} collapsible solutions for {n_exercises} exercises"
    assert exercises.count("</details>") == n_solutions, f"{path.name}: a <details> block is not closed"
    assert prose.CITATION.search(md), f"{path.name}: cites nothing from assets/references.bib"


def test_markdown_is_plain_and_agrees_with_the_notebook(notebook):
    """No MyST syntax; every quoted number, figure, exercise and citation matches (tools/prose.py)."""
    path, _ = notebook
    problems = prose.problems(path)
    assert not problems, f"{path.name}:\n" + "\n".join(problems[:20])


def test_checks_live_apart_from_teaching(notebook):
    """Asserts and recorded numbers sit in check cells of their own, after the cell they check,
    hidden on the site and collapsed in JupyterLab and Colab; no teaching cell carries them."""
    path, nb = notebook
    previous = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and prose.CAPTION_TAG in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code" and prose.is_check_cell(cell):
            tags = cell.metadata.get("tags", [])
            assert "remove-cell" in tags, f"{path.name}: check cell {i} is not hidden on the site (remove-cell)"
            assert cell.metadata.get("jupyter", {}).get("source_hidden"), f"{path.name}: check cell {i} is not collapsed"
            assert cell.metadata.get("cellView") == "form", f"{path.name}: check cell {i} is not a form in Colab"
            assert previous is not None and previous.cell_type == "code", \
                f"{path.name}: check cell {i} does not follow the code cell it checks"
        elif cell.cell_type == "code":
            assert not re.search(r"^\s*assert\b", cell.source, re.M), \
                f"{path.name}: teaching cell {i} carries an assert: move it to a check cell after it\n{cell.source[:300]}"
            assert "glue(" not in cell.source, f"{path.name}: teaching cell {i} records a number (glue)"
            assert "myst_nb" not in cell.source, f"{path.name}: cell {i} imports myst_nb, which Colab lacks"
        previous = cell


def test_every_figure_has_a_caption_and_alt_text(notebook):
    path, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        has_image = any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
        if not has_image:
            continue
        meta = cell.metadata.get("mystnb", {})
        assert meta.get("figure", {}).get("caption"), f"{path.name}: code cell {i + 1} draws a figure with no caption"
        assert meta.get("image", {}).get("alt"), f"{path.name}: code cell {i + 1} draws a figure with no alt text"


def test_ignored_outputs_are_guarded_by_assertions(notebook):
    """A notebook that hides training-dependent outputs from nbval must assert on them."""
    path, nb = notebook
    cells = _code_cells(nb)
    ignored = [c for c in cells[:-1] if "nbval-ignore-output" in c.metadata.get("tags", [])]
    if ignored:
        asserts = sum(len(re.findall(r"^\s*assert\b", c.source, re.M)) for c in cells)
        assert asserts >= 1, f"{path.name}: {len(ignored)} cells escape nbval but nothing is asserted"


def test_setup_files_do_what_the_readme_says():
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    assert "--nbval" in makefile and "--nbval-lax" not in makefile
    assert "jupyter-book build . -W -n --keep-going" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert CONFIG["execute"]["execute_notebooks"] == "off"


def test_requirements_are_pinned():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            assert "==" in line, f"requirements.txt: {line!r} is not pinned"
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].split(";")[0].strip()  # drop comments and platform markers
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[name.strip()] = version.strip()
    assert pins["jupyter-book"].startswith("1."), "Jupyter Book must stay on 1.x"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_every_cited_key_is_in_the_bibliography():
    bib = (ROOT / "assets" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    dupes = [k for k in keys if len(re.findall(rf"@\w+\{{{re.escape(k)},", bib)) > 1]
    assert not dupes, f"duplicate BibTeX keys: {dupes}"
    cited = set()
    for page in ROOT.glob("*.md"):  # the site's own pages (intro, glossary) may use {cite}
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited |= {k.strip() for k in group.split(",")}
    for path in NOTEBOOKS:  # the chapters link to the references page instead
        cited |= {m["key"] for m in prose.CITATION.finditer(_markdown(nbformat.read(path, 4)))}
    missing = cited - keys
    assert not missing, f"cited but not in assets/references.bib: {sorted(missing)}"


def test_no_file_in_the_repository_pickles_whole_models():
    for path in list(CHAPTERS.glob("*.py")) + NOTEBOOKS:
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call} must pass weights_only=True"


def test_chapter_10_says_rightly_that_the_dcgan_scores_lower():
    """Chapter 10 says, without a number, that chapter 7's DCGAN scores far lower on the book's
    scale than guided latent diffusion; the committed outputs of the two chapters must agree,
    by more than three standard deviations of the draws of each."""
    ch7 = prose.glued_values(nbformat.read(ROOT / "chapters" / "07_dcgan_fashion_mnist.ipynb", as_version=4))
    ch9 = prose.glued_values(nbformat.read(ROOT / "chapters" / "10_diffusion_models.ipynb", as_version=4))
    gap = ch9["fd_ld"] - ch7["ch7_fd_gan"]
    assert gap > 3 * (ch9["fd_ld_sd"] + ch7["ch7_fd_gan_sd"]), (ch9["fd_ld"], ch7["ch7_fd_gan"])


def test_chapter_7_says_rightly_how_chapter_4s_vaes_compare():
    """Chapter 7 says, without numbers, that chapter 4's main VAE did not beat the pixel Gaussian
    with prior samples, that its beta = 0.1 VAE with mixtures over codes beat it by a few points,
    and that the DCGAN beats it by far more; the committed outputs must agree."""
    ch4 = prose.glued_values(nbformat.read(ROOT / "chapters" / "04_autoencoders_to_vaes.ipynb", as_version=4))
    ch7 = prose.glued_values(nbformat.read(ROOT / "chapters" / "07_dcgan_fashion_mnist.ipynb", as_version=4))
    assert ch4["fid_vae"] > ch4["fid_pg"], (ch4["fid_vae"], ch4["fid_pg"])
    assert 0 < ch4["sharp_gain"] - ch4["sharp_half"] and ch4["sharp_gain"] < 10, ch4["sharp_gain"]
    dcgan_gain = ch7["ch7_fd_pg"] - ch7["ch7_fd_gan"]
    assert dcgan_gain > 3 * ch4["sharp_gain"], (dcgan_gain, ch4["sharp_gain"])


def test_the_floor_and_the_baseline_are_one_number_in_every_chapter():
    """The book's scale is computed once (genbook.book_scale): every chapter that quotes the
    floor or the baseline must quote the same committed value."""
    floors, baselines = {}, {}
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        values = prose.glued_values(nbformat.read(path, as_version=4))
        for key, value in values.items():
            if re.fullmatch(r"(ch\d+_)?(fd|fid)_floor", key):
                floors[f"{path.name}:{key}"] = value
            if re.fullmatch(r"(ch\d+_)?(fd|fid)_(pg|baseline)", key) or key == "ch8_baseline":
                baselines[f"{path.name}:{key}"] = value
        if "ch8_floor" in values:
            floors[f"{path.name}:ch8_floor"] = values["ch8_floor"]
    assert len(floors) >= 4 and len(baselines) >= 3, (floors, baselines)
    assert len({round(v, 9) for v in floors.values()}) == 1, floors
    assert len({round(v, 9) for v in baselines.values()}) == 1, baselines


def test_chapter_8_recomputes_chapter_1s_bits_per_dimension():
    """Chapter 8 quotes its one-Gaussian score as chapter 1's number, recomputed: the committed
    outputs of the two chapters must agree at the precision the text shows."""
    ch1 = prose.glued_values(nbformat.read(ROOT / "chapters" / "01_what_is_a_generative_model.ipynb", as_version=4))
    ch8 = prose.glued_values(nbformat.read(ROOT / "chapters" / "08_measuring_generative_models.ipynb", as_version=4))
    assert abs(ch1["ch1_pix_bpd"] - ch8["ch8_bpd_one"]) < 5e-3, (ch1["ch1_pix_bpd"], ch8["ch8_bpd_one"])
