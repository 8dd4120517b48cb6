"""Open a page selfsup wrote (a compare report, a contact sheet of picks, an audit) in headless Debian chromium:
check every picture loaded and a report's results table fits the window, and save a full-page screenshot (PNG,
or JPEG for a name ending .jpg).

    python bench/screenshot.py runs/simclr-cifar10-cpu/report.html bench/results/report-cifar10.png --width 1400

Prints a JSON line: pictures (how many, all loaded), the table's right edge and the page's width in pixels.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1400)
    args = p.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=browser, headless=True,
                                                    args=["--no-sandbox", "--disable-gpu"],
                                                    viewport={"width": args.width, "height": 900})
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(Path(args.report).resolve().as_uri())
        facts = page.evaluate("""() => {
            const imgs = [...document.querySelectorAll('img')];
            const r = document.querySelector('#results');  // a report's table; other pages have none
            const t = r ? r.getBoundingClientRect() : {right: 0};
            return {pictures: imgs.length, loaded: imgs.every(i => i.complete && i.naturalWidth > 0),
                    table_right: Math.round(t.right), page_width: document.documentElement.scrollWidth};
        }""")
        jpeg = args.png.lower().endswith((".jpg", ".jpeg"))  # JPEG keeps a full-page shot small enough to commit
        page.screenshot(path=args.png, full_page=True, **({"type": "jpeg", "quality": 70} if jpeg else {}))
        ctx.close()
    facts |= {"window": args.width, "errors": errors, "screenshot": args.png}
    print(json.dumps(facts))
    return 0 if facts["loaded"] and facts["table_right"] <= args.width and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
