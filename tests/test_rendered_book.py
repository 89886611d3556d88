"""The browser check of the rendered book (tools/browser_check.py) fails where a reader would see something broken.

The decisions are tested on plain data; then headless Chromium opens two hand-written pages in a tmp dir, one
clean and one with every fault the check looks for, and the check must pass the first and name each fault of the
second. `make browser-check` runs this file with Chromium installed (QDIFF_BROWSER_REQUIRED=1: a missing browser
fails instead of skipping), then the check over every page of _build/html.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import browser_check as bc  # noqa: E402

BASE = "http://127.0.0.1:8000/"


def _png(width: int = 4, height: int = 3) -> bytes:
    """A small grey RGB PNG."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + b"\x80" * 3 * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PNG = _png()


def kinds(problems):
    return sorted({p.kind for p in problems})


def clean_data(**over):
    data = dict(url=BASE + "a.html", mathjax="typeset", text="A formula and a figure.", all_text="", prose="A formula",
                tracebacks=0, math=[{"rendered": True, "text": ""}], mjx=1, mjx_errors=[],
                images=[{"src": "x.png", "url": BASE + "x.png", "complete": True, "width": 2}], links=[])
    data.update(over)
    return data


@pytest.fixture
def site(tmp_path):
    (tmp_path / "a.html").write_text('<html><body><h2 id="sec">S</h2><a name="old"></a></body></html>')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_text("<html><body></body></html>")
    (tmp_path / "x.png").write_bytes(PNG)
    return tmp_path


def analyse(site, data, events=None, source='<span class="math notranslate">\\(x\\)</span>'):
    return bc.analyse("a.html", data, events or {}, BASE, site, source)


def test_a_clean_page_passes(site):
    assert analyse(site, clean_data()) == []


@pytest.mark.parametrize("prose", ["We trained {glue:text}`n_runs` models", "as shown by {cite}`ho2020`",
                                   "::: {note}\nraw", "```{code-cell} python", "{{ n_runs }} runs"])
def test_raw_myst_markup_fails(site, prose):
    assert kinds(analyse(site, clean_data(prose=prose))) == ["raw markup"]


def test_markup_in_code_is_not_prose(site):
    # COLLECT_JS leaves <pre> and <code> out of the prose; what reaches `text` alone is not checked for markup
    assert analyse(site, clean_data(text="{glue:text}`x` in a code cell")) == []


def test_a_role_name_alone_in_inline_code_fails(site):
    """A stray backtick before a role (`` `{glue:text}`key` ``) hides the role in a code span: the prose check cannot
    see it, the inline-code check must."""
    problems = analyse(site, clean_data(inline_code=["{glue:text}"], text="The grids of the {glue:text}key profile"))
    assert kinds(problems) == ["raw markup"] and "'{glue:text}'" in problems[0].detail
    assert analyse(site, clean_data(inline_code=["qdiff_lib.metrics", "{glue:text}`key`", "x = {a}"])) == []


def test_traceback_fails(site):
    tb = "ValueError Traceback (most recent call last)\nCell In[3]"
    assert kinds(analyse(site, clean_data(text=tb))) == ["traceback"]
    assert kinds(analyse(site, clean_data(all_text=tb))) == ["traceback"]  # in a hidden (print-only) part too
    assert kinds(analyse(site, clean_data(tracebacks=1))) == ["traceback"]


def test_image_that_did_not_load_fails(site):
    broken = {"src": "gone.png", "url": BASE + "gone.png", "complete": True, "width": 0}
    problems = analyse(site, clean_data(images=[broken]))
    assert kinds(problems) == ["image not loaded"] and "gone.png" in problems[0].detail


def test_math_that_did_not_render_fails(site):
    # MathJax never came (offline CDN): the formulas stay raw TeX
    problems = analyse(site, clean_data(mathjax="not loaded", mjx=0, math=[{"rendered": False, "text": "\\(N\\)"}],
                                        prose="against \\(N\\) images"))
    assert kinds(problems) == ["math not rendered", "raw LaTeX in text"]
    # one formula left over while the others rendered, and a TeX error
    problems = analyse(site, clean_data(math=[{"rendered": True, "text": ""}, {"rendered": False, "text": "$$x$$"}],
                                        mjx_errors=["Undefined control sequence \\foo"]))
    assert kinds(problems) == ["math error", "math not rendered"]
    # the served page has math elements, the browser saw none of them
    assert kinds(analyse(site, clean_data(math=[], mjx=0))) == ["math not rendered"]
    # a page without math needs no MathJax
    assert analyse(site, clean_data(math=[], mjx=0, mathjax="absent"), source="<p>no math</p>") == []


def link(href, page_url=BASE + "a.html"):
    from urllib.parse import urljoin

    return {"href": href, "url": urljoin(page_url, href)}


def test_internal_links_must_resolve(site):
    good = [link(h) for h in ["a.html#sec", "#sec", "#old", "sub/", "x.png", "a.html?q=1", "#",
                              "https://arxiv.org/abs/2504.00034", "mailto:x@y.z"]]
    assert analyse(site, clean_data(links=good)) == []
    bad = [link("missing.html"), link("a.html#nope"), link("#nope"), link("sub/other.html")]
    problems = analyse(site, clean_data(links=bad))
    assert kinds(problems) == ["broken link"]
    assert sorted(p.detail.split()[0] for p in problems) == ["#nope", "a.html#nope", "missing.html",
                                                            "sub/other.html"]


def test_network_and_script_failures(site):
    events = {"external": ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"],
              "failed": [BASE + "_static/x.js (HTTP 404)"], "errors": ["TypeError: x is undefined"]}
    assert kinds(analyse(site, clean_data(), events)) == ["JavaScript error", "request to another host",
                                                           "resource failed to load"]
    known = {"errors": ["SyntaxError: Identifier 'THEBE_JS_URL' has already been declared"]}
    assert analyse(site, clean_data(), known) == []


def test_glue_key_without_a_stored_value_fails(tmp_path):
    src = tmp_path / "_sources" / "chapters"
    src.mkdir(parents=True)
    glued = {"output_type": "display_data", "data": {"text/plain": "3"},
             "metadata": {"scrapbook": {"name": "n_runs", "mime_prefix": ""}}}
    other = {"cells": [{"cell_type": "code", "source": "", "outputs": [
        dict(glued, metadata={"scrapbook": {"name": "elsewhere"}})]}]}
    nb = {"cells": [
        {"cell_type": "code", "source": "glue('n_runs', 3)", "outputs": [glued]},
        {"cell_type": "markdown", "source": "Ran {glue:text}`n_runs:.0f` of {glue:text}`n_planned` runs, "
                                            "{glue}`other::elsewhere` and {glue}`other::gone`.\n"
                                            "```{glue:figure} fig_missing\n```"},
    ]}
    (src / "results.ipynb").write_text(json.dumps(nb))
    (src / "other.ipynb").write_text(json.dumps(other))
    problems = bc.glue_problems("chapters/results.html", tmp_path)
    assert kinds(problems) == ["unresolved glue key"]
    assert sorted(p.detail.split()[0] for p in problems) == ["'fig_missing'", "'gone'", "'n_planned'"]
    assert bc.glue_problems("chapters/none.html", tmp_path) == []  # no notebook source: nothing to check


# --- in the browser ------------------------------------------------------------------------------------------------

MATHJAX = ROOT / "node_modules" / "mathjax"
HEAD = ('<html><head><title>t</title><script>window.MathJax = {options: {processHtmlClass: "math"}}</script>'
        '<script defer src="_static/mathjax/es5/tex-mml-chtml.js"></script></head>'
        '<body class="tex2jax_ignore mathjax_ignore">')


def _browser_or_skip():
    missing = [str(p) for p in (Path(bc.CHROMIUM), MATHJAX) if not p.exists()]
    if missing:
        if os.environ.get("QDIFF_BROWSER_REQUIRED") == "1":
            pytest.fail(f"missing {missing} (make chromium mathjax)")
        pytest.skip(f"missing {missing} (make chromium mathjax installs them)")


def test_in_chromium_a_clean_page_passes_and_each_fault_is_named(tmp_path):
    _browser_or_skip()
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "mathjax").symlink_to(MATHJAX, target_is_directory=True)
    (tmp_path / "fig.png").write_bytes(PNG)
    (tmp_path / "good.html").write_text(
        HEAD + '<h1 id="top">Good</h1><p>With <span class="math notranslate">\\(N = 2^n\\)</span> images:</p>'
        '<div class="math notranslate">\\[\\sum_i x_i\\]</div><img src="fig.png"/>'
        '<pre><code>d = {"glue": 1}  # code may hold braces, \\( and :::</code></pre>'
        '<a href="bad.html#broken">a page</a> <a href="#top">top</a></body></html>')
    (tmp_path / "bad.html").write_text(
        HEAD + '<h1 id="broken">Bad</h1><p>We trained {glue:text}`n_runs` models.</p>'
        '<p><span class="math notranslate">\\(x^^2\\)</span> <span class="math">\\(\\undefinedmacro\\)</span></p>'
        '<p>left raw: $$x^2$$</p><p>The grids of the <code>{glue:text}</code>results_profile profile</p>'
        '<img src="nothere.png"/><a href="missing.html">gone</a> <a href="good.html#nope">no anchor</a>'
        '<div class="output traceback"><pre>Traceback (most recent call last):\nValueError: boom</pre></div>'
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></body></html>')
    shots = tmp_path / "shots"
    problems, seen = bc.check_site(tmp_path, shots, ["good.html", "bad.html"], log=lambda *a: None)
    by_page = {page: [p for p in problems if p.page == page] for page in seen}
    assert by_page["good.html"] == [], by_page["good.html"]
    assert seen["good.html"]["mathjax"] == "typeset" and seen["good.html"]["formulas"] == 2
    found = {(p.kind, p.detail.split()[0]) for p in by_page["bad.html"]}
    assert kinds(by_page["bad.html"]) == ["broken link", "image not loaded", "math error", "raw LaTeX in text",
                                          "raw markup", "request to another host", "resource failed to load",
                                          "traceback"], by_page["bad.html"]
    assert {("broken link", "missing.html"), ("broken link", "good.html#nope"), ("image not loaded", "nothere.png"),
            ("math error", "undefined")} <= found, found
    assert sum(p.kind == "math error" for p in by_page["bad.html"]) == 2  # the TeX error and the undefined macro
    assert any("alone in inline code" in p.detail for p in by_page["bad.html"])  # the stray backtick's role
    assert (shots / "good.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (shots / "bad.png").exists()
