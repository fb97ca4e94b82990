"""Make docs/figures/serve.png: `avgen serve` on some runs in headless Chromium, after one generation and one
listening-test trial rated with arbitrary fixed scores.

    python docs/scripts/serve_screenshot.py runs/quickstart/can runs/quickstart/pocan --video VIDEO.mp4

Rates one trial with fixed scores (written to the runs' listening/ratings.json: use copies of the runs if you
want to keep them clean). Needs Chromium (Debian: apt-get install chromium) and the serve extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from serve_support import Browser, ServeProcess, chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--video", type=Path, required=True, help="the video to upload")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "serve.png")
    args = parser.parse_args()
    executable = chromium()
    if executable is None:
        sys.exit("needs Chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp, ServeProcess(*map(str, args.runs), timeout=300) as server, \
            Browser(executable, Path(tmp) / "profile", width=1150) as browser:
        browser.navigate(server.url)
        browser.wait_for("document.querySelectorAll('#runs input').length")
        browser.evaluate("for (const b of document.querySelectorAll('#runs input')) b.checked = true")
        browser.set_files("#video-file", [args.video.resolve()])
        for attempt in ("first (loads each model and exemplar bank)", "again (all loaded)"):
            browser.evaluate("document.getElementById('step').textContent = ''")
            browser.click("#generate")
            browser.wait_for("document.getElementById('step').textContent.startsWith('done')", timeout=1800)
            print(attempt)
            for line in browser.evaluate("[...document.querySelectorAll('#results .result')].map((r) => r.innerText)"):
                print("  " + " ".join(line.split()))
        browser.click("#start-trial")
        labels = browser.wait_for("[...document.querySelectorAll('#stimuli input')].map((s) => s.dataset.label)")
        scores = {label: 20 + (37 * i) % 75 for i, label in enumerate(labels)}
        browser.evaluate("for (const s of document.querySelectorAll('#stimuli input')) { s.value = "
                         f"{scores}[s.dataset.label]; s.dispatchEvent(new Event('input')); }}")
        browser.click("#submit-trial")
        browser.wait_for("document.getElementById('trial-status').textContent.startsWith('saved')")
        browser.wait_for("!!document.querySelector('#mos-table')")
        print(browser.screenshot(args.out))


if __name__ == "__main__":
    main()
