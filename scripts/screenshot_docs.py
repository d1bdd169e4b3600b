"""Renders pages of the built site (``mkdocs build``) in headless Chromium and saves
screenshots; fails when a page logs a console error or a request fails.

    mkdocs build --strict && python scripts/screenshot_docs.py --out DIR [--chromium PATH]

Playwright drives the browser: its own Chromium (``playwright install chromium``) or, with
``--chromium``, the system's (Debian's ``chromium`` package).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path

PAGES = {"home": "", "spec-reference": "reference/spec/"}


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("site"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chromium", default=None, help="a Chromium executable to use")
    args = parser.parse_args(argv)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems: list[str] = []
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox"] if args.chromium else None
        )
        for name, path in PAGES.items():
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m, n=name: (
                    problems.append(f"{n}: console {m.type}: {m.text}")
                    if m.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda e, n=name: problems.append(f"{n}: page error: {e}"))
            page.on(
                "requestfailed", lambda r, n=name: problems.append(f"{n}: request failed: {r.url}")
            )
            response = page.goto(base + path, wait_until="networkidle")
            if response is None or not response.ok:
                problems.append(f"{name}: HTTP {response.status if response else 'none'}")
            title = page.title()
            page.screenshot(path=str(args.out / f"docs-site-{name}.png"), full_page=False)
            print(f"{name}: {base + path} title={title!r} -> {args.out / f'docs-site-{name}.png'}")
        browser.close()
    server.shutdown()
    for problem in problems:
        print(problem)
    print("no console errors" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
