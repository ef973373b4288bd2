"""Open every chapter page of the built book in headless Chromium and check it as a reader would.

    python tools/check_book.py _build/html --screenshots _build/screenshots    # `make check-book`

The book is served on localhost and each chapter page (``notebooks/*.html``) is loaded in
Debian's Chromium through chromedriver. After the page's scripts ran, the check asks the browser:

- figures: at least one image in a cell output, and every such image actually decoded
  (``naturalWidth > 0``: a broken path shows as a zero-width image);
- Colab: a launch link to ``colab.research.google.com/github/.../notebooks/<page>.ipynb``;
- nothing scrolls sideways: no code or text-output block wider than the content column;
- no error output: no traceback, no stderr block mentioning an error, no raw widget text
  (``HBox(``) and no widget placeholder a static page cannot render.

It saves a screenshot of the top of each page and one at its first figure, prints one row per
page, and exits non-zero if any page fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import socketserver
import sys
import threading
from pathlib import Path

PROBE = r"""
const outputs = Array.from(document.querySelectorAll('.cell_output img'));
const broken = outputs.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src);
const colab = Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]'))
    .map(a => a.href);
const tracebacks = document.querySelectorAll(
    '.cell_output .traceback, .cell_output .output.error').length;
const stderr = Array.from(document.querySelectorAll('.cell_output .output.stderr'))
    .map(e => e.innerText).filter(t => /error|traceback|exception/i.test(t));
const text = document.body.innerText;
// code or text output wider than the content column gets a horizontal scrollbar
const scrolling = Array.from(document.querySelectorAll('.cell_input pre, .cell_output pre'))
    .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)  // shown ones
    .map(e => e.innerText.split('\n').reduce((a, b) => a.length >= b.length ? a : b, ''));
const widgets = document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets').length;
return {
  title: document.title,
  figures: outputs.length,
  broken: broken,
  colab: colab,
  tracebacks: tracebacks,
  stderr: stderr,
  raw_widget_text: /HBox\(children=|VBox\(children=|FloatProgress\(/.test(text),
  widgets: widgets,
  scrolling: scrolling,
};
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(root: Path) -> tuple[socketserver.TCPServer, int]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = socketserver.TCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def check_page(driver, url: str, page: str, shots: Path | None) -> tuple[list[str], list[str]]:
    driver.get(url)
    info = driver.execute_script(PROBE)
    problems = []
    if info["figures"] == 0:
        problems.append("no figure in any cell output")
    if info["broken"]:
        problems.append(f"{len(info['broken'])} figure(s) failed to load")
    expected = f"/notebooks/{page}.ipynb"
    if not any(href.endswith(expected) for href in info["colab"]):
        problems.append(f"no Colab link to ...{expected} (found {info['colab'][:2]})")
    if info["tracebacks"]:
        problems.append(f"{info['tracebacks']} error output(s)")
    if info["stderr"]:
        problems.append(f"stderr with an error: {info['stderr'][0][:80]!r}")
    if info["raw_widget_text"]:
        problems.append("raw widget text (HBox(...)) shown")
    if info["scrolling"]:
        problems.append(f"{len(info['scrolling'])} block(s) scroll sideways, e.g. "
                        f"{info['scrolling'][0][:60]!r}")
    if info["widgets"]:
        problems.append(f"{info['widgets']} widget placeholder(s) a static page cannot render")
    if shots is not None:
        driver.save_screenshot(str(shots / f"{page}_top.png"))
        driver.execute_script("const img = document.querySelector('.cell_output img');"
                              "if (img) img.scrollIntoView({block: 'center'});")
        driver.save_screenshot(str(shots / f"{page}_figure.png"))
    return [f"{info['figures']} figures", f"{len(info['colab'])} colab link(s)"], problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args(argv)
    pages = sorted(p.stem for p in (args.html / "notebooks").glob("*.html"))
    if not pages:
        print(f"no chapter pages under {args.html / 'notebooks'}: build the book first")
        return 1
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    server, port = _serve(args.html)
    driver = _driver()
    failed = 0
    try:
        for page in pages:
            facts, problems = check_page(driver, f"http://127.0.0.1:{port}/notebooks/{page}.html",
                                         page, args.screenshots)
            status = "ok  " if not problems else "FAIL"
            failed += bool(problems)
            print(f"{status} {page:<32} {', '.join(facts)}"
                  + "".join(f"\n       - {p}" for p in problems))
    finally:
        driver.quit()
        server.shutdown()
    print(f"\n{len(pages) - failed} of {len(pages)} chapter pages pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
