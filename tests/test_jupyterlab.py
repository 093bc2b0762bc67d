"""A reader's view, tested: each chapter opened in a real JupyterLab (Binder's interface).

A local JupyterLab server (tools/labserver.py) serves the checkout; Debian's Chromium, driven
by Playwright (tools/booksite.py's browser()), opens each chapter with no network beyond
127.0.0.1 and reads what JupyterLab rendered from the Markdown cells. The text must show:

* no MyST syntax: roles such as {cite}`x`, directive fences, (label)= targets, :label:
  option lines, {{ substitutions }}: JupyterLab, Colab and Jupyter show them as they are;
* the formulas typeset by JupyterLab's MathJax, without a TeX error and with no TeX left
  showing as text;
* every number the prose quotes (<!--key:spec-->VALUE<!--/-->, see tools/prose.py) as the
  notebook's own output formats it, and no HTML comment showing as text;
* no dialog in the way, and the kernel that the notebook's metadata names started.

The first screen of each chapter is kept in _build/screenshots/jupyterlab-NN.png.
Where Chromium is missing the module is skipped with a loud reason, as tests/test_browser.py is.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import booksite as site  # noqa: E402
import labserver  # noqa: E402
import prose  # noqa: E402

NOTEBOOKS = prose.book_notebooks(ROOT)  # the chapters, then the appendix
SHOTS = ROOT / "_build" / "screenshots"

#: MyST syntax as it looks once JupyterLab has rendered the Markdown (backticks become code,
#: which the text read below leaves out, so a role shows as "{cite}" before its target).
MYST_RENDERED = {
    "a role such as {cite}`key`": re.compile(r"\{[a-z][\w:-]*\}"),
    "a directive fence such as ```{exercise} or :::{note}": re.compile(r"(`{3,}|:{3,})\s*\{"),
    "a target such as (label)=": re.compile(r"(?:^|\s)\([\w.-]+\)=(?=\s|$)", re.M),
    "a directive option such as :label: or :class:": re.compile(r"(?:^|\s):[a-z][a-z-]*:(?=\s|$)", re.M),
    "an HTML comment": re.compile(r"<!--|-->"),
    "TeX that MathJax did not typeset": re.compile(r"\\[A-Za-z]{2,}|\$"),
}

if site.chromium_path() is None:
    pytest.skip("JUPYTERLAB BROWSER TESTS SKIPPED: Chromium is not installed (apt-get install chromium)",
                allow_module_level=True)

# Read everything after MathJax: open every <details> (the exercises' solutions), leave out
# formulas and code, and return each Markdown cell's text as the reader sees it.
READ_CELLS = """() => {
  document.querySelectorAll('.jp-MarkdownCell details').forEach(d => d.open = true);
  const hide = document.createElement('style');
  hide.textContent = 'mjx-container, .jp-RenderedMarkdown pre, .jp-RenderedMarkdown code { display: none !important; }';
  document.head.appendChild(hide);
  const texts = [...document.querySelectorAll('.jp-MarkdownCell .jp-RenderedMarkdown')].map(e => e.innerText);
  hide.remove();
  return texts;
}"""


def expected_math(nb) -> int:
    """How many formulas the Markdown holds ($...$, $$...$$, outside code), as JupyterLab finds them."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"^(`{3,}|~{3,}).*?^\1", "", cell.source, flags=re.S | re.M)  # fenced code
        text = re.sub(r"`[^`\n]*`", "", text)                                       # inline code
        text = text.replace(r"\$", "")
        blocks = re.findall(r"\$\$.+?\$\$", text, flags=re.S)
        text = re.sub(r"\$\$.+?\$\$", "", text, flags=re.S)
        n += len(blocks) + len(re.findall(r"\$[^$]+?\$", text, flags=re.S))
    return n


def expected_numbers(nb) -> list[tuple[str, str]]:
    """(key, text) of every number the prose quotes: the number formatted from the notebook's
    own output (genbook.glue's record; as the Markdown writes it where there is none), after
    the plain words that precede it in the Markdown (up to three), so that the number is
    looked for where the text quotes it and not anywhere on the page."""
    values = prose.glued_values(nb)
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for m in prose.MARKER.finditer(cell.source):
            key, spec = m["key"], m["spec"] or ""
            if spec == "md":  # a Markdown fragment, not a number
                continue
            value = prose.format_value(values[key], spec) if key in values else m["text"]
            value = re.sub(r"[*_`]", "", value).strip()
            words = re.search(r"(?:\b[A-Za-z]+[\s,]+){1,3}\Z", prose.MARKER.sub(r"\g<text>", cell.source[:m.start()]))
            found.append((key, re.sub(r"\s+", " ", f"{words[0] if words else ''}{value}").strip()))
    return found


@pytest.fixture(scope="module")
def lab():
    with labserver.serve(ROOT) as server:
        yield server


@pytest.fixture(scope="module")
def chromium():
    with site.browser() as b:
        yield b


def open_in_lab(chromium, lab, rel: str):
    """Open the notebook `rel` (relative to the checkout) in JupyterLab; returns (context, page, log)."""
    url, token = lab
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log = {"outside": [], "errors": []}
    page.on("pageerror", lambda e: log["errors"].append(str(e)))

    # Record (rather than route: intercepting every request slows JupyterLab's start a lot)
    # any request that leaves the machine; the test fails on any.
    page.on("request", lambda r: r.url.startswith(("data:", "blob:"))
            or urlparse(r.url).hostname in {"127.0.0.1", "localhost"} or log["outside"].append(r.url))
    page.goto(f"{url}/lab/tree/{rel}?reset&token={token}", wait_until="domcontentloaded")
    return context, page, log


def read_notebook(page, nb, kernel_ready=lambda: True, timeout_ms: int = 60_000) -> dict:
    """Wait until every Markdown cell is rendered, MathJax is done and `kernel_ready()` (the
    notebook's kernel is up, so JupyterLab has updated its metadata); return what the page shows."""
    n_markdown = sum(c.cell_type == "markdown" for c in nb.cells)
    page.wait_for_function(
        "n => document.querySelectorAll('.jp-Notebook .jp-MarkdownCell .jp-RenderedMarkdown').length >= n",
        arg=n_markdown, timeout=timeout_ms)
    n_math = expected_math(nb)
    try:  # MathJax typesets asynchronously after the cells render
        page.wait_for_function(
            "n => document.querySelectorAll('.jp-MarkdownCell mjx-container').length >= n",
            arg=n_math, timeout=30_000)
    except Exception:
        pass  # the assertion below reports how many were typeset
    kernel_up = kernel_ready()
    page.evaluate("() => document.querySelector('.jp-WindowedPanel-outer, .jp-Notebook').scrollTo(0, 0)")
    page.wait_for_timeout(500)
    return {
        "n_markdown": n_markdown,
        "rendered": page.locator(".jp-Notebook .jp-MarkdownCell .jp-RenderedMarkdown").count(),
        "n_math": n_math,
        "typeset": page.locator(".jp-MarkdownCell mjx-container").count(),
        # A TeX error is an merror; an unknown macro is shown as red text (MathJax's noundefined).
        "tex_errors": page.eval_on_selector_all(
            ".jp-MarkdownCell mjx-merror, .jp-MarkdownCell mjx-assistive-mml mtext[mathcolor='red']",
            "els => els.map(e => e.getAttribute('data-mjx-error') || e.textContent)"),
        "fences": page.eval_on_selector_all(".jp-RenderedMarkdown pre code[class*='{']",
                                            "els => els.map(e => e.className)"),
        "dialogs": page.eval_on_selector_all(".jp-Dialog", "els => els.map(e => e.innerText.slice(0, 200))"),
        "kernel": kernel_up,
    }


def check_reader_view(page, nb, lab, rel: str, screenshot: Path | None = None) -> list[str]:
    """Everything wrong with how JupyterLab (`lab`) shows the notebook `nb` at `rel`, open in
    `page` (an empty list: nothing)."""
    seen = read_notebook(page, nb, lambda: labserver.wait_for_kernel(*lab, rel))
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
    texts = page.evaluate(READ_CELLS)
    text = "\n".join(texts)
    problems = []
    if seen["rendered"] < seen["n_markdown"]:
        problems.append(f"{seen['rendered']} of {seen['n_markdown']} Markdown cells rendered")
    if not seen["kernel"]:
        problems.append("the notebook's kernel did not start")
    if seen["dialogs"]:
        problems.append(f"a dialog is in the reader's way: {seen['dialogs']}")
    for what, pattern in MYST_RENDERED.items():
        hits = sorted({m[0] for m in pattern.finditer(text)})
        if hits:
            problems.append(f"the reader sees {what}: {hits[:8]}")
    if seen["fences"]:
        problems.append(f"the reader sees a MyST directive as a code block: {seen['fences'][:8]}")
    if seen["typeset"] < seen["n_math"]:
        problems.append(f"MathJax typeset {seen['typeset']} of {seen['n_math']} formulas")
    if seen["tex_errors"]:
        problems.append(f"MathJax could not typeset: {seen['tex_errors'][:5]}")
    numbers = expected_numbers(nb)
    flat = re.sub(r"\s+", " ", text)
    missing = [(k, v) for k, v in numbers if v not in flat]
    if missing:
        problems.append(f"numbers the prose quotes are not shown as quoted: {missing[:8]}")
        starts = [line.strip()[:50] for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.splitlines() if re.match(r"\s{0,3}<!--", line)]
        if starts:  # the usual cause
            problems.append("a Markdown line that starts with <!-- begins an HTML block (CommonMark), which "
                            f"splits the paragraph and joins words: keep a word before it on its line: {starts[:4]}")
    decimals = len(re.findall(r"\d\.\d", flat))
    want = sum(bool(re.search(r"\d\.\d", v)) for _, v in numbers)
    if decimals < want:
        problems.append(f"{decimals} numbers with a decimal point shown, the prose quotes {want}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_reads_cleanly_in_jupyterlab(chromium, lab, path):
    nb = nbformat.read(path, as_version=4)
    # JupyterLab (Binder) and Colab pick the kernel by it; without it JupyterLab picks its
    # default and marks the notebook changed.
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: the notebook's metadata must name its kernel " \
                                f"(kernelspec python3), not {kernel!r}"
    context, page, log = open_in_lab(chromium, lab, path.relative_to(ROOT).as_posix())
    try:
        rel = path.relative_to(ROOT).as_posix()
        problems = check_reader_view(page, nb, lab, rel, SHOTS / f"jupyterlab-{path.name[:2]}.png")
    finally:
        context.close()
        labserver.shutdown_kernels(*lab)  # the kernel JupyterLab started for the notebook
    assert not log["outside"], f"{path.name}: JupyterLab tried to reach the network: {log['outside'][:5]}"
    assert not problems, f"{path.name} in JupyterLab:\n  " + "\n  ".join(problems)
    quoted = [key for key, _ in expected_numbers(nb)]
    assert quoted, f"{path.name}: the prose quotes no computed number (<!--key:spec-->value<!--/-->)"
    assert set(quoted) & set(prose.glued_values(nb)), \
        f"{path.name}: no number the prose quotes is recorded in the outputs (genbook.glue): run `make execute`"


def test_the_reader_check_catches_myst_and_passes_plain_markdown(chromium, lab, tmp_path):
    """The checks above on two small notebooks: one in MyST, one in plain Jupyter Markdown."""
    glue_output = nbformat.v4.new_output("display_data", data={"text/plain": "ch0_loss = 0.12345"})
    check = nbformat.v4.new_code_cell("# @title Checks\ngenbook.glue('ch0_loss', loss)", outputs=[glue_output])
    plain = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 0. Plain\n\nThe loss is <!--ch0_loss:.3f-->0.123<!--/--> nats, "
                                      "$\\mathcal{L} = -\\log p(x)$, see [Kingma and Welling, 2014](https://x.org/references.html#k)."),
        nbformat.v4.new_markdown_cell("$$\\sum_{i=1}^n x_i^2$$\n\n### Exercise 0.1\n\nWhy?\n\n<details>\n<summary>Solution</summary>\n\n"
                                      "Because $a^2 \\geq 0$.\n\n</details>"),
        check,
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    myst = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("(sec-x)=\n# 0. MyST\n\nThe loss is {glue:text}`ch0_loss:.3f` nats {cite}`kingma2014vae`, "
                                      "$\\mathcal{L} = \\frobnicate{x}$, rounded <!--ch0_loss:.2f-->0.99<!--/-->."),
        nbformat.v4.new_markdown_cell("```{exercise}\n:label: ex-0\nWhy?\n```\n\n:::{solution} ex-0\n:class: dropdown\nBecause.\n:::"),
        check,
    ], metadata=plain.metadata)
    folder = ROOT / "_build" / "jupyterlab-check"  # under the server's root, ignored by git
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, nb in (("plain", plain), ("myst", myst)):
        nbformat.write(nb, folder / f"{name}.ipynb")
        rel = f"_build/jupyterlab-check/{name}.ipynb"
        context, page, _ = open_in_lab(chromium, lab, rel)
        try:
            results[name] = check_reader_view(page, nb, lab, rel)
        finally:
            context.close()
            labserver.shutdown_kernels(*lab)
    assert results["plain"] == [], results["plain"]
    found = "\n".join(results["myst"])
    for what in ("role", "directive", "target", "option", "MathJax could not typeset", "numbers the prose quotes"):
        assert what in found, f"the check missed {what!r} in MyST Markdown:\n{found}"
