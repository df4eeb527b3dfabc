"""Regenerate docs/report_html.png: a finished run's report.html, shot in headless chromium.

    python docs/make_report_html_png.py runs/paper --max-gap 45 [--out docs/report_html.png]

The report goes to a temporary folder (the run is only read). The gap slider is set to
--max-gap, so the shot shows a chosen operating point, and the page is captured from the top
down to the operating-point table. Needs plotly and playwright (the dev extra) and chromium.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from ermgap_ray.report import write_explorer
from ermgap_ray.report_html import CHROMIUM_ARGS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished sweep (holds trials.parquet)")
    parser.add_argument("--max-gap", type=float, default=None, help="slider bound, points")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "report_html.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_path = write_explorer(args.run_dir, path=Path(tmp) / "report.html")
        browser = pw.chromium.launch(executable_path=args.chromium, args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        if args.max_gap is not None:
            page.fill("#bound-value", f"{args.max_gap:g}")
            page.dispatch_event("#bound-value", "change")
            page.evaluate("document.activeElement.blur()")
        page.wait_for_timeout(500)
        box = page.locator("#op-table").bounding_box() or {"y": 0, "height": 1000}
        clip = {"x": 0, "y": 0, "width": 1360, "height": box["y"] + box["height"] + 16}
        page.screenshot(path=str(args.out), clip=clip, full_page=True)
        browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
