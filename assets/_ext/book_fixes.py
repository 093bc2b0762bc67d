"""A local Sphinx extension with two fixes for the published pages.

1. Figures, tables and exercises are numbered per chapter ("Fig. 7.3", "Exercise 7.2").
The table of contents is not numbered (the chapter titles carry their numbers), and
without a numbered toctree Sphinx counts figures across the whole book, so chapter 7
would open at "Fig. 31". After Sphinx has assigned its numbers, each chapter's are
replaced by (chapter, position in the chapter), the chapter taken from the file name
(``chapters/07_...``). Cross-references and captions read the same table, so
``{numref}`` from another chapter shows the new number too.

2. Sphinx 7.4 registers an inline script (a `<script>` with a body and no file) twice when an
extension adds it after the builder has started: once as filename '' and once as None,
which compare unequal. sphinx-thebe and sphinx-togglebutton both do this, and the second
copy of `const THEBE_JS_URL = ...` throws "Identifier has already been declared" in every
reader's console. This drops the exact duplicates from each page's script list.
"""
import re

_CHAPTER = re.compile(r"chapters/(\d+|[A-Z])_")  # chapters 1, 2, ... and appendices A, B, ...


def _number_per_chapter(app, env):
    for docname, by_type in env.toc_fignumbers.items():
        match = _CHAPTER.match(docname)
        if not match:
            continue
        chapter = int(match.group(1)) if match.group(1).isdigit() else match.group(1)
        for numbers in by_type.values():
            for position, target in enumerate(sorted(numbers, key=numbers.get), start=1):
                numbers[target] = (chapter, position)
    # Sphinx decides which pages to rewrite by comparing its own (book-wide) numbers, so on
    # an incremental build tell it which pages' chapter numbers changed since the last one.
    previous = getattr(env, "book_fixes_fignumbers", None)
    current = {doc: {t: dict(n) for t, n in by_type.items()} for doc, by_type in env.toc_fignumbers.items()}
    env.book_fixes_fignumbers = current
    if previous is None:
        return list(current)
    return [doc for doc in current if current[doc] != previous.get(doc)]


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = (getattr(js, "filename", js) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


def setup(app):
    # After sphinx's own TocTreeCollector (priority 500) has numbered the figures.
    app.connect("env-get-updated", _number_per_chapter, priority=900)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
