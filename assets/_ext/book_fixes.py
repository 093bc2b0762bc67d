"""A local Sphinx extension with one fix for the published pages.

Sphinx 7.4 registers an inline script (a `<script>` with a body and no file) twice when an
extension adds it after the builder has started: once as filename '' and once as None,
which compare unequal. sphinx-thebe and sphinx-togglebutton both do this, and the second
copy of `const THEBE_JS_URL = ...` throws "Identifier has already been declared" in every
reader's console. This drops the exact duplicates from each page's script list.
"""


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
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
