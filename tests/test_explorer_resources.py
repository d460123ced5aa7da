"""explorer/resources.py: the explorer's JavaScript and CSS come from the installed packages.

The browser half (the App in a real JupyterLab, offline) is tests/test_jupyterlab.py; these are the
pieces, checked on known inputs.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from urllib.parse import unquote

import pytest

from rhox.explorer import resources


def test_escape_js_line_breaks_known_answer():
    raw = 'a="\x85";b="\u2028\u2029";c="\x0b\x0c\x1c\x1d\x1e";\nd=1'
    out = resources.escape_js_line_breaks(raw)
    assert out == 'a="\\u0085";b="\\u2028\\u2029";c="\\u000b\\u000c\\u001c\\u001d\\u001e";\nd=1'
    # Python's splitlines (what Jinja's indent uses) now sees only the real line break...
    assert out.splitlines() == ['a="\\u0085";b="\\u2028\\u2029";c="\\u000b\\u000c\\u001c\\u001d\\u001e";', "d=1"]
    # ... and the string literals keep their values (JSON string escapes are JavaScript's).
    assert json.loads(out[2:out.index(";")]) == "\x85"
    assert json.loads(out[out.index("c=") + 2:out.index(";\n")]) == "\x0b\x0c\x1c\x1d\x1e"


def test_panel_indent_filter_keeps_inlined_code_intact():
    from jinja2.filters import do_indent
    from panel.io.resources import _env

    code = 'x = "\x85";\ny = 2;'
    # The bug: the stock filter breaks the string literal in two.
    assert do_indent(code, 4).count("\n") == 2
    resources._safe_indent_filter()
    resources._safe_indent_filter()  # idempotent
    out = _env.from_string("{{ js|indent(4) }}").render(js=code)
    assert out == 'x = "\\u0085";\n    y = 2;'


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to parse JavaScript")
def test_inlined_notebook_bundle_with_vtk_parses(tmp_path):
    """Panel's notebook loader with Bokeh, Panel and vtk.js inlined is valid JavaScript."""
    import panel as pn
    from bokeh.resources import INLINE
    from panel.io.notebook import _autoload_js, require_components
    from panel.io.resources import Resources, bundle_resources, set_resource_mode

    pn.extension("vtk")  # outside a kernel: only registers the VTK models
    resources._safe_indent_filter()
    with set_resource_mode("inline"):
        res = Resources.from_bokeh(INLINE, notebook=True)
        bundle = bundle_resources(None, res, notebook=True)
        configs, requirements, exports, skip_imports = require_components()
        js = _autoload_js(bundle=bundle, configs=configs, requirements=requirements, exports=exports,
                          skip_imports=skip_imports, ipywidget=False)
    assert "vtk.js" not in "".join(str(u) for u in bundle.js_files), bundle.js_files  # inlined, not linked
    assert not re.search(r"https://cdn\.(bokeh|holoviz)\.org\S*\.js", "".join(str(u) for u in bundle.js_files))
    assert "\x85" not in js and len(js) > 2_000_000  # vtk.js alone is 2.5 MB
    path = tmp_path / "load.js"
    path.write_text(js, encoding="utf-8")
    proc = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_css_data_url_embeds_the_installed_file():
    from panel.io.resources import CDN_DIST, DIST_DIR

    url = resources.css_data_url(f"{CDN_DIST}css/alerts.css")
    assert url.startswith("data:text/css;charset=utf-8,")
    assert unquote(url.split(",", 1)[1]) == (DIST_DIR / "css" / "alerts.css").read_text(encoding="utf-8")
    # relative url(...) references (the loading spinners) are embedded, the query string ignored
    loading = unquote(resources.css_data_url(f"{CDN_DIST}css/loading.css?v=1"))
    assert "../assets" not in loading
    svg = re.search(r"url\('data:image/svg\+xml;base64,([^']+)'\)", loading).group(1)
    assert base64.b64decode(svg) == (DIST_DIR / "assets" / "arc_spinner.svg").read_bytes()
    assert resources.css_data_url("https://example.org/x.css") is None
    assert resources.css_data_url(f"{CDN_DIST}css/no-such-file.css") is None


def test_notebook_updates_carry_css_not_cdn_links():
    import panel.io.notebook as nb
    from bokeh.document import Document
    from bokeh.models import Div, ImportedStyleSheet
    from panel.io.resources import CDN_DIST

    resources._inline_stylesheet_updates()
    resources._inline_stylesheet_updates()  # idempotent: one wrapper
    assert nb.diff._rhox_inline and not getattr(nb.diff.__wrapped__, "_rhox_inline", False)
    doc = Document()
    div = Div(text="x")
    doc.add_root(div)
    doc.hold("collect")
    div.stylesheets = [ImportedStyleSheet(url=f"{CDN_DIST}css/markdown.css"), "p { color: red; }"]
    msg = nb.diff(doc, binary=False)
    content = json.dumps(msg.content)
    assert "cdn.holoviz.org" not in content
    assert "data:text/css" in content and "p { color: red; }" in content


def test_not_a_notebook_here():
    assert resources.in_notebook() is False
