"""The chapters' Markdown is plain Jupyter Markdown: this keeps it honest.

Every chapter is read in four places (the site, Colab, Binder's JupyterLab, a local
Jupyter), so its Markdown uses nothing that only Jupyter Book understands: numbers are
written out, citations are links, figures and exercises are referred to by their numbers.
What ties the text to the computation:

* A number the text quotes is written between two HTML comments, invisible when rendered:
  ``<!--vae_nll:.1f-->240.5<!--/-->``. The key names a value that a check cell records with
  ``genbook.glue("vae_nll", value)`` (its output reads ``vae_nll = 240.5393...``), and the
  spec says how the text writes it. ``sync`` rewrites every such number from the notebook's
  own outputs (``make execute`` runs it after executing); ``problems`` lists every number
  that disagrees with its value, and the structure tests fail on any.
* ``[Figure 4.2](#fig-ch4-samples)``: the number must be the figure's position among the
  chapter's captioned figures (the site numbers them the same way), and the link resolves on
  the site. Each figure cell is followed by a caption cell for notebook readers (hidden on
  the site, which draws the caption from the cell's metadata); ``sync`` writes it.
* ``### Exercise 4.2`` headings are numbered 1, 2, ... in order, and "Exercise 4.2" in the
  text must name one of them.
* A citation is ``[Kingma and Welling, 2014](<site>/references.html#kingma2014vae)``: the
  key must be in ``assets/references.bib`` and the text must match its authors and year.

    python tools/prose.py sync  chapters/NN_name.ipynb [...]   # rewrite numbers and captions
    python tools/prose.py check chapters/NN_name.ipynb [...]   # list disagreements (exit 1)
"""
from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "chapters"))
from genbook import format_value  # noqa: E402

#: A number (or phrase) the text quotes: <!--key:spec-->text<!--/-->
MARKER = re.compile(r"<!--(?P<key>[A-Za-z_]\w*)(?::(?P<spec>[^>]*?))?-->(?P<text>.*?)<!--/-->", re.S)
#: A check cell's record of a value: the output line ``key = repr(value)``.
GLUED = re.compile(r"^(?P<key>[A-Za-z_]\w*) = (?P<value>.*)$", re.S)
FIGURE_REF = re.compile(r"\[Figure (?P<number>[\dA-Z]+\.\d+)\]\((?P<file>[\w.]*)#(?P<label>fig-[\w-]+)\)")
EXERCISE_HEADING = re.compile(r"^### Exercise (?P<number>[\dA-Z]+\.\d+)\b", re.M)
EXERCISE_REF = re.compile(r"(?<!### )Exercises? (?P<number>[\dA-Z]+\.\d+)")
CITATION = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<base>https?://[^)#\s]+)/references\.html#(?P<key>[\w-]+)\)")
#: MyST-only syntax that Jupyter, JupyterLab and Colab would show as it is.
MYST_SYNTAX = {
    "a role such as {cite}`...`": re.compile(r"\{[\w:-]+\}`"),
    "a directive fence such as ```{exercise}": re.compile(r"^\s*(`{3,}|:{3,})\s*\{[\w:-]+\}", re.M),
    "a target such as (label)=": re.compile(r"^\s*\([\w-]+\)=\s*$", re.M),
    "a directive option such as :label:": re.compile(r"^\s*:(label|class|name|format|numref):", re.M),
    "a substitution such as {{ name }}": re.compile(r"\{\{[^}]*\}\}"),
}
CHECK_TITLE = "# @title Checks"
CAPTION_TAG = "figure-caption"


def book_notebooks(root: Path = ROOT) -> list[Path]:
    """The chapters (chapters/NN_name.ipynb) in order, then the appendices (chapters/A_name.ipynb)."""
    chapters = root / "chapters"
    return sorted(chapters.glob("[0-9][0-9]_*.ipynb")) + sorted(chapters.glob("[A-Z]_*.ipynb"))


def chapter_number(path: Path) -> str:
    """"4" for chapters/04_name.ipynb, "A" for the appendix chapters/A_name.ipynb."""
    prefix = Path(path).name.split("_")[0]
    return str(int(prefix)) if prefix.isdigit() else prefix


def site_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["html"]["baseurl"].rstrip("/")


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith(CHECK_TITLE)


def _glue_matches(nb):
    """The genbook.glue records in the check cells' saved outputs, in order, repeats included."""
    for cell in nb.cells:
        if not is_check_cell(cell):
            continue
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain", "") if out.output_type == "display_data" else ""
            match = GLUED.match(text)
            if match:
                yield match


def glued_keys(nb) -> list[str]:
    """Every key the check cells recorded with genbook.glue, in order, repeats included."""
    return [match["key"] for match in _glue_matches(nb)]


def glued_values(nb) -> dict:
    """The values that the check cells recorded with genbook.glue, from the saved outputs."""
    return {match["key"]: ast.literal_eval(match["value"]) for match in _glue_matches(nb)}


def figure_numbers(nb, chapter: str) -> dict[str, str]:
    """label -> "C.N": the chapter's captioned figures in order, as the site numbers them."""
    numbers = {}
    for cell in nb.cells:
        name = cell.metadata.get("mystnb", {}).get("figure", {}).get("name") if cell.cell_type == "code" else None
        if name:
            numbers[name] = f"{chapter}.{len(numbers) + 1}"
    return numbers


def caption_text(number: str, caption: str) -> str:
    return f"**Figure {number}.** {caption}"


@lru_cache(maxsize=None)
def bibliography() -> dict[str, tuple[str, str]]:
    """key -> (authors as the text writes them, year), from assets/references.bib."""
    from pybtex.database import parse_file
    from pybtex.richtext import Text
    entries = {}
    for key, entry in parse_file(str(ROOT / "assets" / "references.bib")).entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        last = [Text.from_latex(" ".join(p.prelast_names + p.last_names)).render_as("text") for p in people]
        if not last:
            names = Text.from_latex(entry.fields.get("organization", entry.fields.get("title", key))).render_as("text")
        elif len(last) == 1:
            names = last[0]
        elif len(last) == 2:
            names = f"{last[0]} and {last[1]}"
        else:
            names = f"{last[0]} et al."
        entries[key] = (names, entry.fields.get("year", "n.d."))
    return entries


def sync(path: Path) -> int:
    """Rewrite the notebook's quoted numbers and caption cells from its own outputs; return changes."""
    nb = nbformat.read(path, as_version=4)
    values = glued_values(nb)
    figures = figure_numbers(nb, chapter_number(path))
    changes = 0

    def rewrite(match):
        nonlocal changes
        key, spec = match["key"], match["spec"] or ""
        if key not in values:
            return match[0]
        text = format_value(values[key], spec)
        if spec == "md":  # a block of Markdown keeps the lines of its own
            text = f"\n{text.strip()}\n"
        if text != match["text"]:
            changes += 1
        return f"<!--{key}{':' + spec if spec else ''}-->{text}<!--/-->"

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and CAPTION_TAG not in cell.metadata.get("tags", []):
            new = MARKER.sub(rewrite, cell.source)
            cell.source = new
        figure = cell.metadata.get("mystnb", {}).get("figure", {}) if cell.cell_type == "code" else {}
        if figure.get("name"):
            want = caption_text(figures[figure["name"]], figure["caption"])
            nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
            if nxt is not None and CAPTION_TAG in nxt.metadata.get("tags", []):
                if nxt.source != want:
                    nxt.source = want
                    changes += 1
    if changes:
        nbformat.write(nb, path)
    return changes


def problems(path: Path) -> list[str]:
    """Everything in the notebook's Markdown that disagrees with the notebook or the book."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    chapter = chapter_number(path)
    values = glued_values(nb)
    figures = figure_numbers(nb, chapter)
    bib = bibliography()
    base = site_url()
    found = []
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    text = "\n".join(c.source for c in markdown)
    for what, pattern in MYST_SYNTAX.items():
        for match in pattern.finditer(text):
            found.append(f"MyST syntax that notebook readers would see, {what}: {match[0]!r}")
    keys = glued_keys(nb)
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        found.append(f"{key!r} is recorded with genbook.glue more than once: the text would quote only the last")
    for match in MARKER.finditer(text):
        key, spec = match["key"], match["spec"] or ""
        if key not in values:
            found.append(f"the text quotes {key!r}, which no check cell records with genbook.glue")
            continue
        want, got = format_value(values[key], spec), match["text"]
        if spec == "md":
            want, got = want.strip(), got.strip()
        if got != want:
            found.append(f"the text says {got!r} for {key!r}, the notebook computed {want!r}")
    for line in text.split("\n"):
        # A line that opens with an HTML comment starts an HTML block in Markdown: the paragraph
        # breaks there and the line is not Markdown any more. Only a block's own markers may.
        if re.match(r"^\s{0,3}<!--(?!/-->\s*$)(?![A-Za-z_]\w*:md-->\s*$)", line):
            found.append(f"a line opens with a quoted number, which breaks the paragraph: {line[:60]!r}")
    for cell in nb.cells:
        bad = sorted({hex(ord(ch)) for ch in cell.source if ord(ch) < 0x20 and ch != "\n"})
        if bad:
            # A tab or a control character, e.g. "\b" from "\bar" typed in a Python string.
            found.append(f"a {cell.cell_type} cell holds control characters {bad}: {cell.source[:60]!r}")
    if "<!--" in MARKER.sub("", text):
        found.append("an HTML comment that is not a quoted number (<!--key:spec-->value<!--/-->)")
    for match in FIGURE_REF.finditer(text):
        label = match["label"]
        if match["file"]:
            other = ROOT / "chapters" / match["file"]
            numbers = figure_numbers(nbformat.read(other, as_version=4), chapter_number(other)) if other.exists() else {}
        else:
            numbers = figures
        if numbers.get(label) != match["number"]:
            found.append(f"Figure {match['number']} links to {label}, which is Figure {numbers.get(label, '(none)')}")
    if re.search(r"\b[Ff]ig(?:ure)?\.? [\dA-Z]+\.\d+\b(?!\]\()", re.sub(FIGURE_REF, "", text.replace("**Figure", ""))):
        found.append("a figure number written without a link to its figure ([Figure C.N](#fig-...))")
    exercises = EXERCISE_HEADING.findall(text)
    want_ex = [f"{chapter}.{n}" for n in range(1, len(exercises) + 1)]
    if exercises != want_ex:
        found.append(f"exercise headings are numbered {exercises}, want {want_ex}")
    for match in EXERCISE_REF.finditer(text):
        if match["number"] not in exercises and match["number"].startswith(f"{chapter}."):
            found.append(f"the text refers to Exercise {match['number']}, which does not exist")
    for match in CITATION.finditer(text):
        key = match["key"]
        if key not in bib:
            found.append(f"citation of {key!r}, which is not in assets/references.bib")
            continue
        if match["base"] != base:
            found.append(f"citation of {key!r} links to {match['base']}, the site is at {base}")
        names, year = bib[key]
        if match["text"] not in (f"{names}, {year}", year):
            found.append(f"citation of {key!r} reads {match['text']!r}, want {names + ', ' + year!r} (or {year!r} after the names)")
        elif match["text"] == year and names not in text[max(0, match.start() - 80):match.start()]:
            found.append(f"citation of {key!r} gives only the year, but {names!r} does not precede it")
    for i, cell in enumerate(nb.cells):
        figure = cell.metadata.get("mystnb", {}).get("figure", {}) if cell.cell_type == "code" else {}
        if not figure.get("name"):
            continue
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        want = caption_text(figures[figure["name"]], figure["caption"])
        if nxt is None or CAPTION_TAG not in nxt.metadata.get("tags", []) or nxt.source != want:
            found.append(f"figure {figure['name']} is not followed by its caption cell ({want[:60]}...)")
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("sync", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    status = 0
    for name in argv[1:]:
        if argv[0] == "sync":
            print(f"{name}: {sync(Path(name))} change(s)")
        else:
            for problem in problems(Path(name)):
                print(f"{name}: {problem}")
                status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
