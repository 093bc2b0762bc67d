"""The built site, as a reader meets it: every page in a real browser, with no network.

Needs the site in _build/html (`make test` builds it first) and Debian's Chromium. Where
Chromium is missing the whole module is skipped with a loud reason (pytest -rs shows it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import booksite as site  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
PAGES = site.pages_in_order()

if site.chromium_path() is None:
    pytest.skip("BROWSER TESTS SKIPPED: Chromium is not installed (apt-get install chromium)",
                allow_module_level=True)
if not (site.HTML / "intro.html").exists():
    pytest.fail("the site is not built: run `make book` (make test does it) first", pytrace=False)


@pytest.fixture(scope="module")
def base_url():
    with site.serve() as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with site.browser() as b:
        yield b


class Visit:
    """One page load, recording console errors, failed requests and every request's host."""

    def __init__(self, chromium, url: str, theme: str = "light"):
        self.context = chromium.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.failed, self.outside = [], [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))

        def route(r):
            host = urlparse(r.request.url).hostname
            if r.request.url.startswith(("data:", "blob:")) or host in {"127.0.0.1", "localhost"}:
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)
        self.page.goto(url, wait_until="networkidle")
        if theme != "light":
            site.set_theme(self.page, theme)

    def close(self):
        self.context.close()


@pytest.fixture
def visit(chromium, base_url):
    opened = []

    def _open(path: str, theme: str = "light") -> Visit:
        v = Visit(chromium, f"{base_url}/{path}", theme)
        opened.append(v)
        return v

    yield _open
    for v in opened:
        v.close()


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_offline_without_errors(visit, path):
    v = visit(path)
    assert v.page.title(), f"{path}: no title"
    assert not v.outside, f"{path}: requests left localhost: {v.outside[:5]}"
    assert not v.failed, f"{path}: failed requests: {v.failed[:5]}"
    assert not v.errors, f"{path}: console errors: {v.errors[:5]}"


@pytest.mark.parametrize("path", PAGES)
def test_math_is_rendered_by_local_mathjax(visit, path):
    v = visit(path)
    n_math = v.page.locator(".math").count()
    if n_math == 0:
        pytest.skip(f"{path} has no math")
    try:  # MathJax typesets asynchronously; formulas inside closed dropdowns count too
        v.page.wait_for_function("n => document.querySelectorAll('mjx-container').length >= n",
                                 arg=n_math, timeout=30_000)
    except Exception:
        pass
    rendered = v.page.locator("mjx-container").count()
    assert rendered >= n_math, f"{path}: {n_math} formulas, {rendered} rendered"
    scripts = v.page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert any("mathjax/tex-chtml.js" in s and "127.0.0.1" in s for s in scripts), "MathJax is not the local copy"


@pytest.mark.parametrize("path", PAGES)
def test_images_load_and_have_alt_text(visit, path):
    v = visit(path)
    images = v.page.eval_on_selector_all(
        "article img", "els => els.map(e => ({src: e.src, w: e.naturalWidth, alt: e.getAttribute('alt')}))")
    for img in images:
        assert img["w"] > 0, f"{path}: image did not load: {img['src']}"
        assert img["alt"] and img["alt"].strip(), f"{path}: image without alt text: {img['src']}"


def test_previous_and_next_links_follow_the_toc(visit, base_url):
    for i, path in enumerate(PAGES):
        v = visit(path)
        prev = v.page.locator("a.left-prev")
        nxt = v.page.locator("a.right-next")
        if i == 0:
            assert prev.count() == 0
        else:
            assert prev.count() == 1 and v.page.evaluate("a => a.href", prev.element_handle()).endswith(PAGES[i - 1]), path
        if i == len(PAGES) - 1:
            assert nxt.count() == 0
        else:
            assert nxt.count() == 1 and v.page.evaluate("a => a.href", nxt.element_handle()).endswith(PAGES[i + 1]), path
        v.close()


@pytest.mark.parametrize("path", [p for p in PAGES if p.startswith("chapters/")])
def test_launch_buttons_point_at_this_repository(visit, path):
    v = visit(path)
    hrefs = v.page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    owner_repo = CONFIG["repository"]["url"].rstrip("/").split("github.com/")[1]
    branch = CONFIG["repository"]["branch"]
    notebook = path.replace(".html", ".ipynb")
    binder = [h for h in hrefs if "mybinder.org" in h]
    colab = [h for h in hrefs if "colab.research.google.com" in h]
    assert binder and colab, f"{path}: no Binder or Colab button"
    assert any(f"/v2/gh/{owner_repo}/{branch}" in h and notebook in h for h in binder), binder
    assert any(h.endswith(f"/github/{owner_repo}/blob/{branch}/{notebook}") for h in colab), colab
    downloads = v.page.eval_on_selector_all("a[href$='.ipynb']", "els => els.map(e => e.href)")
    assert any(d.endswith(Path(notebook).name) and "127.0.0.1" in d for d in downloads), "no .ipynb download"


def test_search_finds_a_word_from_a_chapter(visit):
    v = visit("search.html?q=Fashion-MNIST")
    v.page.wait_for_selector("#search-results li", timeout=30_000)
    results = v.page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.href)")
    assert any("chapters/01_what_is_a_generative_model" in r for r in results), results[:10]


def test_dark_mode_switch_works_and_figures_keep_their_white_background(visit):
    v = visit("chapters/01_what_is_a_generative_model.html")
    assert v.page.evaluate("document.documentElement.dataset.theme") == "light"
    v.page.locator("button.theme-switch-button").first.click()
    themes = {v.page.evaluate("document.documentElement.dataset.theme")}
    for _ in range(2):  # the switch cycles light -> dark -> auto
        v.page.locator("button.theme-switch-button").first.click()
        themes.add(v.page.evaluate("document.documentElement.dataset.theme"))
    assert "dark" in themes, themes
    site.set_theme(v.page, "dark")
    assert v.page.evaluate("document.documentElement.dataset.theme") == "dark"
    background = v.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(255, 255, 255)", "the page did not turn dark"


def test_every_figure_png_is_opaque():
    """Figures are drawn on an opaque white canvas, so they read on the dark page too."""
    from PIL import Image
    pngs = sorted((site.HTML / "_images").glob("*.png"))
    assert pngs, "the site has no figures"
    for png in pngs:
        with Image.open(png) as im:
            if im.mode in ("RGBA", "LA") or "transparency" in im.info:
                alpha = im.convert("RGBA").getchannel("A")
                assert alpha.getextrema()[0] == 255, f"{png.name} has transparent pixels"


def test_the_references_page_lists_the_bibliography(visit):
    v = visit("references.html")
    n = v.page.locator(".citation, dl.citation > dt, div.citation").count()
    assert n >= 5, f"references page lists {n} entries"


@pytest.mark.parametrize("path", [p for p in PAGES if p.startswith("chapters/")])
def test_figures_and_exercises_are_numbered_within_their_chapter(path):
    """Chapter 7's figures read Figure 7.1, 7.2, ... in page order, not a count across the book,
    and every "Figure 7.2" link in the text lands on the figure captioned "Figure 7.2"."""
    import re
    prefix = re.search(r"chapters/(\d+|[A-Z])_", path).group(1)
    chapter = int(prefix) if prefix.isdigit() else prefix  # chapters 1, 2, ...; appendix A
    html = (site.HTML / path).read_text(encoding="utf-8")
    captions = re.findall(r'<figure[^>]*id="([\w-]+)"[^>]*>.*?<span class="caption-number">Figure ([\dA-Z]+\.\d+)',
                          html, re.S)
    assert captions, f"{path} has no numbered figures"
    numbers = [n for _, n in captions]
    assert numbers == [f"{chapter}.{i}" for i in range(1, len(numbers) + 1)], numbers
    by_id = dict(captions)
    for target, text in re.findall(r'<a class="reference internal" href="#(fig-[\w-]+)"[^>]*>(?:<span[^>]*>)?Figure ([\dA-Z]+\.\d+)', html):
        assert by_id.get(target) == text, f"{path}: a link reads Figure {text} but {target} is Figure {by_id.get(target)}"
    exercises = re.findall(r"<h3>Exercise ([\dA-Z]+\.\d+)", html)
    assert exercises == [f"{chapter}.{i}" for i in range(1, len(exercises) + 1)], exercises
    text = re.sub(r"<[^>]+>", "", html)
    assert not re.search(r"\b(Exercise|Figure) \1\b", text), "a reference reads 'Exercise Exercise'"
    # What only notebook readers need stays off the site: the caption cells (the site draws the
    # caption from the figure's metadata) and the check cells (hidden, like the Markdown markers).
    assert not re.search(r"<strong>Figure \d+\.\d+\.</strong>", html), f"{path}: a caption cell shows on the site"
    assert "@title Checks" not in html and "genbook.glue" not in html, f"{path}: a check cell shows on the site"
    assert "&lt;!--" not in html, f"{path}: a number's marker shows as text"
