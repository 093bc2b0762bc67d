"""PNG screenshots of every page of the built site, light and dark: `make screenshots`.

Writes _build/screenshots/<page>-light.png and <page>-dark.png (the first 2,400 pixels of
each page at 1280 wide), for reading the site as a reader sees it.
"""
from __future__ import annotations

import sys

import booksite as site

OUT = site.ROOT / "_build" / "screenshots"


def main(argv: list[str]) -> int:
    pages = argv or site.pages_in_order()
    OUT.mkdir(parents=True, exist_ok=True)
    with site.serve() as base, site.browser() as browser:
        for theme in ("light", "dark"):
            context = browser.new_context(viewport={"width": 1280, "height": 2400})
            page = context.new_page()
            for path in pages:
                page.goto(f"{base}/{path}", wait_until="networkidle")
                site.set_theme(page, theme)
                page.wait_for_timeout(300)
                name = path.replace("/", "_").replace(".html", "").replace("?", "_").replace("=", "_")
                page.screenshot(path=str(OUT / f"{name}-{theme}.png"))
                print(f"{OUT.name}/{name}-{theme}.png")
            context.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
