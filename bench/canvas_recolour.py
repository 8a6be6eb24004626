"""Recolouring the in-browser token view: milliseconds per metric / scale switch.

Builds the view of a synthetic 2,000-token run (signed THR, entropy, prob, rank, top-k),
opens it in headless Chromium and switches the colour metric and scale five times, printing
``name=value`` lines:

    recolour_ms_<i>        until the new colour of every token is computed (script + style)
    recolour_frame_ms_<i>  until the frame that shows them has been painted
    recolour_ms_max / recolour_frame_ms_max

Needs Debian's chromium and chromium-driver. Run from a tree root:
``PYTHONPATH=$PWD python bench/canvas_recolour.py [--tokens 2000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenprism.app.components.token_canvas import token_canvas_html

SWITCHES = (
    ("prob", "fixed"),
    ("thr", "run"),
    ("entropy", "run"),
    ("thr", "fixed"),
    ("rank", "run"),
)


# the repaint, then the frame that shows it: works on any version that has tpRecolour
FRAMED = """
const done = arguments[2], t0 = performance.now();
window.tpRecolour(arguments[0], arguments[1]);
requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0));
"""


def tokens(n: int) -> list[dict[str, Any]]:
    """A run of ``n`` tokens, the first 20 of them prompt."""
    return [
        {
            "position": i,
            "token_id": 100 + i % 50,
            "text": " word" if i % 9 else "\n",
            "is_prompt": i < 20,
            "entropy": (i % 37) / 9.0,
            "prob": 1.0 / (1 + i % 11),
            "logprob": -math.log(1 + i % 11),
            "rank": 1 + i % 11,
            "thr": math.sin(i / 13.0) * (41.0 if i % 3 else 5.0),
            "top_k": [{"text": " a", "prob": 0.5}, {"text": " b", "prob": 0.2}],
        }
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=options)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "view.html"
            doc = token_canvas_html(
                tokens(args.tokens), ["entropy", "prob", "thr", "rank"], "entropy"
            )
            page.write_text(doc, encoding="utf-8")
            driver.get(page.as_uri())
            sync: list[float] = []
            framed: list[float] = []
            for _ in range(args.rounds):
                for metric, mode in SWITCHES:
                    sync.append(
                        driver.execute_script(
                            "return window.tpRecolour(arguments[0], arguments[1])", metric, mode
                        )
                    )
                for metric, mode in SWITCHES:
                    framed.append(driver.execute_async_script(FRAMED, metric, mode))
    finally:
        driver.quit()
    print(f"tokens={args.tokens}")
    for i, value in enumerate(sync):
        print(f"recolour_ms_{i}={value:.1f}")
    for i, value in enumerate(framed):
        print(f"recolour_frame_ms_{i}={value:.1f}")
    print(f"recolour_ms_max={max(sync):.1f}")
    print(f"recolour_ms_median={sorted(sync)[len(sync) // 2]:.1f}")
    print(f"recolour_frame_ms_max={max(framed):.1f}")
    print(f"recolour_frame_ms_median={sorted(framed)[len(framed) // 2]:.1f}")


if __name__ == "__main__":
    main()
