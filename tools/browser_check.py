"""Open every page of the built book in headless Chromium and fail on what a reader would see broken.

    python tools/browser_check.py [_build/html] [--screenshots _build/screenshots]

`make browser-check` runs it after the strict build. Each page is served from a local HTTP server on 127.0.0.1 and
loaded in Debian's Chromium (driven over the Chrome DevTools Protocol with the small `websocket-client` package;
no browser download), with every host name but 127.0.0.1 unresolvable, so the page is seen as offline. A page
fails when it shows:

- raw MyST markup: a role or directive that was not parsed (`{glue:text}`, `{cite}`, `:::`, `{{ key }}`), or a
  glue key whose value is missing from the stored notebook (myst-nb renders it as nothing: the shipped source
  in `_sources/` names the key, its outputs do not hold it);
- a Python traceback (`Traceback (most recent call last)` or an error output);
- a figure that did not load (an <img> whose naturalWidth is 0 once loaded);
- mathematics that did not render (a `math` element without MathJax output, a MathJax error, or raw `\\(`,
  `\\[`, `$$` left in the visible text);
- a broken internal link (the file an <a href> names does not exist, or its #anchor is no id in it);
- a resource that failed to load, a request to another host (the book must work without a network), or an
  uncaught JavaScript error.

A screenshot of the top of each page is saved as PNG (under `_build/screenshots/` by default) for the reader of
the CI log. The decisions are made by `analyse()` on plain data, which tests/test_rendered_book.py exercises on
hand-written pages.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The machine's network is closed: without these Chromium waits on connections it will never get.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check", "--mute-audio",
    "--hide-scrollbars", "--force-device-scale-factor=1",
    # every host but the local server is unresolvable: the book is checked as a reader without a network sees it
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
WIDTH, HEIGHT = 1280, 1000
SCREENSHOT_MAX_HEIGHT = 4000  # px of the top of each page; a full chapter would be tens of thousands

# Raw MyST markup in prose (text outside code, pre, scripts and rendered math).
RAW_MARKUP = [
    (re.compile(r"\{[A-Za-z][\w.+-]*(?::[\w.+-]+)*\}`?"), "unparsed MyST role"),
    (re.compile(r":::"), "unparsed colon fence (:::)"),
    (re.compile(r"```"), "unparsed code fence (```)"),
    (re.compile(r"\{\{\s*[\w.-]+\s*\}\}"), "unresolved substitution"),
]
#: An inline code span (outside code blocks) that holds a MyST role's name and nothing else: what a stray backtick
#: before a role leaves (`` `{glue:text}`key` `` renders "{glue:text}" as code and the key as text); no prose
#: writes a role's name alone in code.
BARE_ROLE = re.compile(r"^\s*\{[A-Za-z][\w.+-]*(?::[\w.+-]+)*\}\s*$")
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{")
TRACEBACK = "Traceback (most recent call last)"
# Uncaught JavaScript errors that are known, harmless and not the book's to fix: the text of the error, and why.
KNOWN_JS_ERRORS = {
    "Identifier 'THEBE_JS_URL' has already been declared":
        "sphinx-thebe 0.3.1 adds its inline configuration script twice under Sphinx 7; the second copy fails to "
        "redeclare its constants. Thebe (live code) is off in this book, and nothing else on the page depends on it.",
}
# myst-nb's glue roles and directives, in markdown sources
GLUE_REF = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`|^\s*(?:```+|:::+)\{glue(?::\w+)?\}\s+(\S+)", re.M)

# Runs in the page once it has loaded: waits for the images and MathJax, then returns what the checks need.
COLLECT_JS = r"""
(async () => {
  const within = (p, ms) => Promise.race([p, new Promise(r => setTimeout(r, ms))]);
  await within(Promise.all([...document.images].map(img => {
    img.loading = "eager";
    return img.complete ? null
      : new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); });
  })), 15000);
  let mathjax = "absent";
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    mathjax = "timeout";
    await within(MathJax.startup.promise.then(() => { mathjax = "typeset"; }), 30000);
  } else if (document.querySelector('script[src*="mathjax" i]')) {
    mathjax = "not loaded";
  }
  const skip = "pre, code, script, style, textarea, noscript, template, mjx-container, mjx-assistive-mml";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: n => n.parentElement && n.parentElement.closest(skip)
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const prose = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) prose.push(n.data);
  return {
    url: location.href,
    title: document.title,
    mathjax,
    text: document.body.innerText,
    all_text: document.body.textContent,
    prose: prose.join(" "),
    inline_code: [...document.querySelectorAll("code")].filter(e => !e.closest("pre")).map(e => e.textContent),
    tracebacks: document.querySelectorAll(".traceback, .output.error").length,
    math: [...document.querySelectorAll(".math")].map(e => ({
      rendered: !!e.querySelector("mjx-container") || e.tagName.toLowerCase() === "mjx-container",
      text: e.textContent.slice(0, 80),
    })),
    mjx: document.querySelectorAll("mjx-container").length,
    mjx_errors: [
      ...[...document.querySelectorAll("mjx-merror")].map(e => e.getAttribute("data-mjx-error") || e.textContent),
      // an undefined macro is typeset in red as its own name (MathJax's noundefined), not as an error
      ...[...document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')]
        .map(e => "undefined " + e.textContent),
    ],
    images: [...document.images].map(i => ({src: i.getAttribute("src"), url: i.currentSrc || i.src,
                                           complete: i.complete, width: i.naturalWidth})),
    links: [...document.querySelectorAll("a[href]")].map(a => ({href: a.getAttribute("href"), url: a.href})),
    height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
  };
})()
"""


@dataclass(frozen=True)
class Problem:
    page: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.detail}"


# ---------------------------------------------------------------------------------------------------------------
# Decisions (plain data in, problems out)


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            m = re.search(r"url\s*=\s*['\"]?([^'\";]+)", a.get("content") or "", re.I)
            self.refresh = m.group(1).strip() if m else None


@functools.cache
def _parse(path: Path, mtime_ns: int) -> _Ids:
    p = _Ids()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p


def page_ids(path: Path) -> set[str]:
    """The ids (and <a name>) a static HTML file defines: the targets of #anchors."""
    return _parse(path, path.stat().st_mtime_ns).ids


def meta_refresh(path: Path) -> str | None:
    return _parse(path, path.stat().st_mtime_ns).refresh


def local_target(url: str, base_url: str, root: Path) -> tuple[Path, str] | None:
    """The file (and fragment) a resolved URL names under `root` when it points into the served site, else None."""
    parts = urlsplit(url)
    base = urlsplit(base_url)
    if parts.scheme in ("http", "https") and parts.netloc == base.netloc:
        rel = unquote(parts.path)
        prefix = unquote(base.path)
        if not rel.startswith(prefix):
            return None
        rel = rel[len(prefix):]
    elif parts.scheme == "file":
        try:
            rel = str(Path(unquote(parts.path)).relative_to(root))
        except ValueError:
            return None
    else:
        return None
    target = root / rel.lstrip("/")
    if rel == "" or rel.endswith("/"):
        target = target / "index.html"
    return target, unquote(parts.fragment)


def check_links(page: str, links: list[dict], base_url: str, root: Path) -> list[Problem]:
    problems, seen = [], set()
    for link in links:
        href, url = link["href"], link["url"]
        if href.strip() in ("", "#") or href.startswith(("mailto:", "javascript:", "tel:", "data:")):
            continue
        found = local_target(url, base_url, root)
        if found is None or (href, url) in seen:
            continue
        seen.add((href, url))
        target, fragment = found
        if not target.is_file():
            problems.append(Problem(page, "broken link", f"{href} (no file {target.relative_to(root)})"))
        elif fragment and target.suffix == ".html" and fragment not in page_ids(target):
            problems.append(Problem(page, "broken link", f"{href} (no id {fragment!r} in {target.relative_to(root)})"))
    return problems


def analyse(page: str, data: dict, events: dict, base_url: str, root: Path, source_html: str) -> list[Problem]:
    """Every problem a page shows, from what COLLECT_JS returned (`data`), what the browser logged while it loaded
    (`events`: external, failed, errors) and the static HTML it was served (`source_html`)."""
    problems: list[Problem] = []
    prose = data.get("prose", "")
    for pattern, what in RAW_MARKUP:
        for found in sorted(set(m.group(0) for m in pattern.finditer(prose))):
            problems.append(Problem(page, "raw markup", f"{what}: {found!r} {_around(prose, found)}"))
    for code in sorted({c for c in data.get("inline_code", []) if BARE_ROLE.match(c)}):
        problems.append(Problem(page, "raw markup", f"a role's name alone in inline code (a stray backtick?): "
                                                    f"{code.strip()!r} {_around(data.get('text', ''), code.strip())}"))
    text = data.get("text", "") + "\n" + data.get("all_text", "")  # what shows, and what hides (print-only parts)
    if TRACEBACK in text or data.get("tracebacks"):
        problems.append(Problem(page, "traceback", _around(text, TRACEBACK, 120)
                                or f"{data.get('tracebacks')} error output(s)"))
    for img in data.get("images", []):
        if not img.get("complete") or not img.get("width"):
            problems.append(Problem(page, "image not loaded", img.get("src") or img.get("url") or "?"))
    # math: the served page has math elements (or TeX delimiters) and MathJax must have rendered every one
    math = data.get("math", [])
    source_has_math = bool(math) or bool(re.search(r'class="(?:[^"]*\s)?math(?:\s[^"]*)?"', source_html))
    if source_has_math and not data.get("mjx"):
        problems.append(Problem(page, "math not rendered",
                                f"{len(math)} formula(s), no MathJax output (MathJax {data.get('mathjax')})"))
    else:
        for m in math:
            if not m.get("rendered"):
                problems.append(Problem(page, "math not rendered", repr(m.get("text"))))
    for err in data.get("mjx_errors", []):
        problems.append(Problem(page, "math error", err))
    for found in sorted(set(m.group(0) for m in RAW_TEX.finditer(prose))):
        problems.append(Problem(page, "raw LaTeX in text", f"{found!r} {_around(prose, found)}"))
    problems += check_links(page, data.get("links", []), base_url, root)
    for url in events.get("external", []):
        problems.append(Problem(page, "request to another host", url))
    for url in events.get("failed", []):
        problems.append(Problem(page, "resource failed to load", url))
    for err in events.get("errors", []):
        if not any(known in err for known in KNOWN_JS_ERRORS):
            problems.append(Problem(page, "JavaScript error", err))
    return problems


def _around(text: str, found: str, width: int = 50) -> str:
    i = text.find(found)
    if i < 0:
        return ""
    return "in '..." + " ".join(text[max(0, i - width): i + len(found) + width].split()) + "...'"


def glue_problems(page: str, root: Path) -> list[Problem]:
    """Glue keys the page's shipped source refers to but its stored outputs do not hold. myst-nb renders such a
    key as nothing (only `jupyter-book build -W` says so), so the rendered page alone cannot show it."""
    source = root / "_sources" / Path(page).with_suffix(".ipynb")
    if not source.is_file():
        return []
    try:
        keys = _glue_keys(source)
        text = "\n".join("".join(c.get("source", "")) for c in json.loads(source.read_text())["cells"]
                         if c.get("cell_type") == "markdown")
    except (OSError, ValueError, KeyError):
        return [Problem(page, "unreadable source", str(source.relative_to(root)))]
    problems = []
    for m in GLUE_REF.finditer(text):
        ref = m.group(1) or m.group(2)
        if "::" in ref:  # path::key[:format], another document's glue
            other, key = ref.split("::", 1)
            key = key.split(":")[0]
            other_src = (source.parent / other).with_suffix(".ipynb")
            ok = other_src.is_file() and key in _glue_keys(other_src)
        else:  # key[:format]
            key = ref.split(":")[0]
            ok = key in keys
        if not ok:
            problems.append(Problem(page, "unresolved glue key", f"{key!r} has no stored value (renders empty)"))
    return problems


def _glue_keys(path: Path) -> set[str]:
    keys = set()
    for cell in json.loads(path.read_text())["cells"]:
        for out in cell.get("outputs", []):
            name = (out.get("metadata") or {}).get("scrapbook", {}).get("name")
            if name:
                keys.add(name)
    return keys


# ---------------------------------------------------------------------------------------------------------------
# The browser


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@functools.cache
def _handler(directory: str):
    return functools.partial(_QuietHandler, directory=directory)


class Server:
    """`python -m http.server` on 127.0.0.1 (a free port), in a thread."""

    def __init__(self, root: Path):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Chromium:
    """Headless Chromium with a fresh profile, one tab, spoken to over the DevTools Protocol."""

    def __init__(self, executable: str = CHROMIUM, timeout: float = 30.0):
        import websocket  # websocket-client, pinned in requirements-browser.txt

        self.profile = tempfile.mkdtemp(prefix="browser-check-")
        self.log = open(Path(self.profile).parent / (Path(self.profile).name + ".log"), "w+b")
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start ({executable}): {self._log_tail()}")
                time.sleep(0.05)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def _log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def _recv(self, timeout: float) -> dict:
        import websocket

        self.ws.settimeout(max(timeout, 0.01))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise TimeoutError from None

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float, after: int = 0) -> dict | None:
        """The first event `method` at or after index `after` of self.events, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events[after:]:
                if ev["method"] == method:
                    return ev
            try:
                msg = self._recv(deadline - time.monotonic())
            except TimeoutError:
                return None
            if "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                try:
                    self.call("Browser.close", timeout=5)
                except Exception:
                    pass
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.log.close()
            os.unlink(self.log.name)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def visit(browser: Chromium, url: str, base_url: str, redirects: bool,
          timeout: float = 60.0) -> tuple[dict, dict, bytes]:
    """Load `url`; returns (COLLECT_JS's data, the browser's events for the page, a PNG screenshot)."""
    browser.events.clear()
    browser.call("Page.navigate", url=url)
    if browser.wait_event("Page.loadEventFired", timeout) is None:
        raise TimeoutError(f"{url} did not load in {timeout:.0f} s")
    if redirects:  # a <meta http-equiv="refresh"> page: the page it sends the reader to loads next
        first = next(i for i, e in enumerate(browser.events) if e["method"] == "Page.loadEventFired")
        browser.wait_event("Page.loadEventFired", 10, after=first + 1)
    res = browser.call("Runtime.evaluate", timeout=timeout, expression=COLLECT_JS, awaitPromise=True,
                       returnByValue=True)
    if "exceptionDetails" in res:
        raise RuntimeError(f"{url}: the check script failed: {res['exceptionDetails']}")
    data = res["result"]["value"]
    height = min(int(data.get("height") or HEIGHT), SCREENSHOT_MAX_HEIGHT)
    png = base64.b64decode(browser.call(
        "Page.captureScreenshot", format="png", captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1})["data"])
    events = {"external": [], "failed": [], "errors": []}
    urls: dict[str, str] = {}
    base_host = urlsplit(base_url).netloc
    for ev in browser.events:
        p = ev.get("params", {})
        if ev["method"] == "Network.requestWillBeSent":
            req_url = p["request"]["url"]
            urls[p["requestId"]] = req_url
            parts = urlsplit(req_url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != base_host:
                events["external"].append(req_url)
        elif ev["method"] == "Network.loadingFailed" and not p.get("canceled"):
            u = urls.get(p["requestId"], "?")
            if urlsplit(u).netloc == base_host:
                events["failed"].append(f"{u} ({p.get('errorText')})")
        elif ev["method"] == "Network.responseReceived" and p["response"]["status"] >= 400:
            u = p["response"]["url"]
            if urlsplit(u).netloc == base_host and not u.endswith("/favicon.ico"):
                events["failed"].append(f"{u} (HTTP {p['response']['status']})")
        elif ev["method"] == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            events["errors"].append((d.get("exception") or {}).get("description") or d.get("text", "?"))
    return data, events, png


def html_pages(root: Path) -> list[str]:
    """Every page of the built site (not the copies of sources or the static assets)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.html")
                  if p.relative_to(root).parts[0] not in ("_static", "_sources", "_images"))


def check_site(root: Path, screenshots: Path | None = None, pages: list[str] | None = None,
               executable: str = CHROMIUM, log=print) -> tuple[list[Problem], dict[str, dict]]:
    """Open every page of `root` in Chromium; returns the problems and, per page, what was seen."""
    root = root.resolve()
    pages = pages if pages is not None else html_pages(root)
    problems: list[Problem] = []
    seen: dict[str, dict] = {}
    with Server(root) as server, Chromium(executable) as browser:
        for page in pages:
            t0 = time.monotonic()
            url = urljoin(server.url, page)
            try:
                data, events, png = visit(browser, url, server.url, meta_refresh(root / page) is not None)
            except (TimeoutError, RuntimeError) as e:
                problems.append(Problem(page, "did not load", str(e)))
                log(f"FAIL {page}: {e}")
                continue
            found = analyse(page, data, events, server.url, root, (root / page).read_text(errors="replace"))
            found += glue_problems(page, root)
            problems += found
            if screenshots is not None:
                shot = screenshots / Path(page).with_suffix(".png")
                shot.parent.mkdir(parents=True, exist_ok=True)
                shot.write_bytes(png)
            seen[page] = dict(seconds=time.monotonic() - t0, formulas=len(data["math"]), images=len(data["images"]),
                              links=len(data["links"]), mathjax=data["mathjax"])
            log(f"{'FAIL' if found else 'ok  '} {page}  ({seen[page]['seconds']:.1f} s; {len(data['math'])} formulas,"
                f" MathJax {data['mathjax']}; {len(data['images'])} images; {len(data['links'])} links)")
            for p in found:
                log(f"     - {p.kind}: {p.detail}")
    return problems, seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", nargs="?", default=str(ROOT / "_build" / "html"), help="the built site")
    ap.add_argument("--screenshots", default=str(ROOT / "_build" / "screenshots"), help="where the PNGs go")
    ap.add_argument("--chromium", default=CHROMIUM, help="the browser executable (default %(default)s)")
    ap.add_argument("--page", action="append", dest="pages", help="a page relative to the site (repeatable; "
                    "default: every page)")
    args = ap.parse_args(argv)
    root = Path(args.html)
    if not (root / "index.html").exists() and not args.pages:
        print(f"browser-check: no built book in {root} (run `make build-check` first)", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"browser-check: {args.chromium} not found (`make chromium` installs Debian's chromium)",
              file=sys.stderr)
        return 2
    shots = Path(args.screenshots)
    shutil.rmtree(shots, ignore_errors=True)
    t0 = time.monotonic()
    problems, seen = check_site(root, shots, args.pages or None, args.chromium)
    bad = sorted({p.page for p in problems})
    print(f"browser check: {len(seen)} pages opened in {time.monotonic() - t0:.1f} s, screenshots in {shots}; "
          f"{len(problems)} problem(s) on {len(bad)} page(s)" + (f": {', '.join(bad)}" if bad else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
