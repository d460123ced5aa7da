"""How the explorer's JavaScript and CSS (Bokeh, Panel, vtk.js) reach the browser, with no internet.

- **Served** (``rhox serve``, ``panel serve explorer/app.py``): Panel's server serves every file
  from the installed packages under ``/static/`` (its default ``resources="server"`` mode);
  nothing to do here.
- **In a notebook kernel**: Panel either links its CDNs (the default: a blank output offline)
  or *inlines* the libraries into the notebook output (``inline=True``). We inline: it needs no
  Jupyter server extension and no guess of the server's base URL, so it does not depend on the
  front end (JupyterLab is the one tested), and a saved notebook still renders offline. The
  price is the size of the output of the cell that loads the explorer: 5.5 MB (Bokeh, Panel and
  vtk.js), which Panel stores twice (two MIME types) in a saved notebook.

Inlining has one bug, worked around here: Panel's notebook template indents each inlined library
with Jinja's ``indent`` filter, which splits lines with ``str.splitlines()``. That also splits at
U+0085 (NEL), U+2028, U+2029 and a few control characters, which are *not* line breaks in
JavaScript; vtk.js has U+0085 inside string literals, so the inlined vtk.js became invalid
("Invalid or unexpected token") and nothing rendered. :func:`escape_js_line_breaks` writes those
characters as ``\\uXXXX`` escapes (same string value, no raw character left to split on) before
indenting.

Inlining has a gap too: stylesheets Panel attaches *after* the first render (a button's loading
spinner, the stylesheets of a Markdown or Alert pane whose text changes, a pane added later) are
links to its CDN, because Panel inlines stylesheets only when it renders a view.
:func:`_inline_stylesheet_updates` gives each such link the same CSS, read from the installed
Panel, as a ``data:`` URL before the update leaves the kernel.
"""
from __future__ import annotations

import base64
import builtins
import functools
import mimetypes
import re
from urllib.parse import quote

#: Characters ``str.splitlines()`` breaks at that JavaScript does not treat as line breaks.
#: (U+2028/U+2029 are line terminators in JavaScript, but inside a string literal they are only
#: legal since ES2019 and never across a split; escaping keeps the string's value in every case.)
_SPLITLINES_ONLY = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in _SPLITLINES_ONLY})


def escape_js_line_breaks(code: str) -> str:
    """``code`` with every character that Python's ``splitlines`` (but not JavaScript) treats as a
    line break written as a ``\\uXXXX`` escape.

    Only valid where such characters occur inside string, regular-expression or template literals
    (or comments), which is where minified libraries have them.
    """
    return code.translate(_ESCAPES)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (the test Panel itself uses to publish notebook output)."""
    if not hasattr(builtins, "__IPYTHON__"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and hasattr(ip, "kernel")


def _safe_indent_filter():
    """Panel's Jinja ``indent`` filter, made safe for inlined JavaScript (idempotent)."""
    from jinja2.filters import do_indent
    from panel.io.resources import _env

    current = _env.filters.get("indent")
    if getattr(current, "_rhox_safe", False):
        return

    def indent(s, *args, **kwargs):
        return do_indent(escape_js_line_breaks(str(s)), *args, **kwargs)

    indent._rhox_safe = True
    _env.filters["indent"] = indent


def css_data_url(url: str) -> str | None:
    """A ``data:`` URL holding the CSS file that Panel links from its CDN at ``url``, read from the
    installed Panel (files it refers to by relative ``url(...)``, e.g. the loading spinner's SVGs,
    embedded too); None when ``url`` is not such a file."""
    from panel.io.resources import CDN_DIST, DIST_DIR

    if not url.startswith(CDN_DIST):
        return None
    path = DIST_DIR / url[len(CDN_DIST):].split("?")[0]
    if not path.is_file():
        return None
    css = _CSS_URL.sub(lambda m: _embed(path.parent, m), path.read_text(encoding="utf-8"))
    return "data:text/css;charset=utf-8," + quote(css, safe="")


_CSS_URL = re.compile(r"""url\((['"]?)([^'")]+)\1\)""")


def _embed(folder, match) -> str:
    """``url(...)`` of a relative file as a base64 ``data:`` URL (left as it was otherwise)."""
    ref = match.group(2)
    if ":" in ref or ref.startswith(("/", "#")):
        return match.group(0)
    target = (folder / ref.split("?")[0]).resolve()
    if not target.is_file():
        return match.group(0)
    mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return f"url('data:{mime};base64,{base64.b64encode(target.read_bytes()).decode()}')"


def _inline_stylesheet_updates():
    """Make every update Panel sends to a notebook carry its CSS instead of CDN links (idempotent).

    All of Panel's notebook updates go through ``panel.io.notebook.push`` -> ``diff``: before a
    diff is serialised, each ``ImportedStyleSheet`` it references whose URL is on Panel's CDN gets
    a ``data:`` URL with the same CSS instead (one small file each: loading spinner, markdown,
    alerts, theme).
    """
    import panel.io.notebook as nb
    from bokeh.model.util import collect_models
    from bokeh.models import ImportedStyleSheet

    original = nb.diff
    if getattr(original, "_rhox_inline", False):
        return
    urls: dict[str, str | None] = {}

    def localise(events) -> None:
        values = [getattr(e, "new", None) for e in events]
        for m in collect_models(*[v for v in values if v is not None]):
            if isinstance(m, ImportedStyleSheet) and m.url.startswith(("http://", "https://")):
                if m.url not in urls:
                    urls[m.url] = css_data_url(m.url)
                if urls[m.url] is not None:
                    m.url = urls[m.url]

    @functools.wraps(original)
    def diff(doc, binary=True, events=None):
        localise(list(doc.callbacks._held_events) if events is None else events)
        return original(doc, binary=binary, events=events)

    diff._rhox_inline = True
    nb.diff = diff


def extension(*args, **kwargs) -> None:
    """``pn.extension(*args, **kwargs)``, with every resource from the installed packages.

    In a notebook kernel the libraries are inlined into the output (see the module docstring),
    and Panel's callbacks are run on the kernel's main thread (:mod:`rhox.explorer.kernel`);
    served, Panel's own static routes are used. The arguments are those of ``pn.extension``.
    """
    import panel as pn

    if in_notebook():
        from .kernel import comms_on_main_thread, ordered_notebook_pushes

        _safe_indent_filter()
        _inline_stylesheet_updates()
        kwargs.setdefault("inline", True)
        comms_on_main_thread()  # not resources, but needed at the same moment: see kernel.py
        ordered_notebook_pushes()
    pn.extension(*args, **kwargs)
