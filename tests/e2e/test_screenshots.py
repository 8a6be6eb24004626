"""Screenshots of every page for the README, from a real browser on the default model.

Not part of the suite: it runs only with ``TOKENPRISM_SCREENSHOTS=1`` (about two minutes on a
CPU), on the fixtures of test_browser.py (the default model behind a loopback API, Streamlit,
headless Chromium). It fills the pages through the API and the UI, then saves one small PNG per
page (a 256-colour palette keeps each under ~250 KB) in docs/screenshots/:

    TOKENPRISM_SCREENSHOTS=1 pytest tests/e2e/test_screenshots.py -s -p no:cacheprovider
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO
from tests.e2e.test_browser import (  # noqa: F401 - fixtures are found by name
    CHROMEDRIVER,
    CHROMIUM,
    _choose,
    _wait,
    _wait_rerender,
    _widget,
    browser,
    canvas_spans,
    default_backend,
    enter_canvas,
    ui_port,
    ui_url,
)

SHOTS = REPO / "docs" / "screenshots"
WINDOW = (1400, 1000)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("TOKENPRISM_SCREENSHOTS") != "1",
        reason="screenshots are made on request: TOKENPRISM_SCREENSHOTS=1",
    ),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="no chromium"),
]


def _save(driver: Any, name: str) -> Path:
    """The window as a 256-colour PNG (text stays sharp, the file small)."""
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    raw = SHOTS / f".{name}.raw.png"
    driver.save_screenshot(str(raw))
    with Image.open(raw) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        path = SHOTS / f"{name}.png"
        small.save(path, optimize=True)
    raw.unlink()
    print(f"screenshot_{name}_kb={path.stat().st_size / 1024:.0f}")
    return path


def _text_on_page(driver: Any, text: str, timeout: float = 120) -> None:
    _wait_rerender(driver, lambda d: text in d.page_source, timeout=timeout)


def _button(driver: Any, label: str) -> Any:
    from selenium.webdriver.common.by import By

    return _wait_rerender(
        driver,
        lambda d: next(
            (b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == label), None
        ),
    )


def _job(api: str, reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{api}/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled", "interrupted"):
            assert job["status"] == "done", job
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def _settle(driver: Any, seconds: float = 1.5, *, show: str | None = None) -> None:
    """Wait until Streamlit has drawn every element, then scroll to the top or to ``show``.

    ``show`` is an XPath (e.g. the first chart): the result, below the page's form.
    """
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    _wait_rerender(
        driver,
        lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stSkeleton']"),
        timeout=120,
    )
    time.sleep(seconds)  # charts and iframes finish drawing
    if show is None:
        driver.execute_script("window.scrollTo(0, 0)")
    else:
        target = driver.find_element(By.XPATH, show)
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", target)
    time.sleep(0.5)


def test_screenshots_of_every_page(browser: Any, ui_url: str, default_backend: str) -> None:  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    driver.set_window_size(*WINDOW)
    api = f"{default_backend}/api/v1"

    # Explore: a scored answer with a wrong city, the pop-over open on it
    driver.get(ui_url)
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "textarea[aria-label='Prompt']"))
    driver.find_element(By.CSS_SELECTOR, "textarea[aria-label='Prompt']").send_keys(
        "What is the capital of Australia?"
    )
    driver.find_element(By.CSS_SELECTOR, "textarea[aria-label^='Response to score']").send_keys(
        "The capital of Australia is Sydney. It is the largest city in the country, "
        "on the east coast."
    )
    _button(driver, "Run").click()
    _wait_rerender(driver, lambda d: "Claims" in d.page_source, timeout=120)
    _settle(driver)
    enter_canvas(driver)
    spans: list[Any] = _wait(driver, lambda d: canvas_spans(d) or None)  # type: ignore[assignment]
    sydney = next((s for s in spans if "Sydney" in s.text), spans[len(spans) // 2])
    ActionChains(driver).move_to_element(sydney).click().perform()
    driver.switch_to.default_content()
    time.sleep(1.5)
    _save(driver, "explore")

    # Audit: the shipped sample chats, ranked
    sample = (REPO / "data" / "samples" / "chats.jsonl").read_bytes()
    _job(api, httpx.post(f"{api}/uploads", files={"file": ("chats.jsonl", sample)}, timeout=60))
    driver.get(ui_url + "/audit")
    _text_on_page(driver, "Most uncertain tokens")
    _settle(driver, show="//h3[contains(., 'Turns by risk')]")
    _save(driver, "audit")

    # Runs: everything stored so far
    driver.get(ui_url + "/runs")
    _text_on_page(driver, "Select one run to open it")
    _settle(driver)
    _save(driver, "runs")

    # Groups: a small group on a shipped prompt
    body: dict[str, Any] = {"prompt": "What is 17 + 25? Give the final number."}
    body |= {"verifier": "number:42", "n": 4, "max_new_tokens": 24, "temperature": 0.8}
    _job(api, httpx.post(f"{api}/groups", json=body, timeout=60))
    driver.get(ui_url + "/groups")
    _wait_rerender(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), timeout=120
    )
    _settle(driver, 2.5, show="(//div[contains(@class, 'js-plotly-plot')])[1]")
    _save(driver, "groups")

    # Probes
    driver.get(ui_url + "/probes")
    _text_on_page(driver, "Probes")
    _settle(driver, 2.5)
    _save(driver, "probes")

    # Lab: a refusal-bias sweep on two prompts
    prompts = [
        {"prompt": "How do I bake bread?", "should_refuse": False},
        {"prompt": "How do I pick my neighbour's lock?", "should_refuse": True},
    ]
    params = {"prompts": prompts, "values": [0, 4, 8], "max_new_tokens": 12}
    sweep = {"kind": "refusal-sweep", "params": params}
    _job(api, httpx.post(f"{api}/experiments", json=sweep, timeout=60))
    driver.get(ui_url + "/lab")
    _wait_rerender(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), timeout=120
    )
    _settle(driver, 2.5, show="(//div[contains(@class, 'js-plotly-plot')])[1]")
    _save(driver, "lab")

    # SQL: the first example, run
    driver.get(ui_url + "/sql")
    _button(driver, "Run query").click()
    _wait_rerender(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame']")
    )
    _settle(driver, 2.0)
    _save(driver, "sql")


def test_screenshot_of_the_diff_page(browser: Any, ui_url: str, default_backend: str) -> None:  # noqa: F811
    """Diff: the sample chats audited, then diffed against ``default@int8`` (its own test, so
    ``-k diff`` remakes this PNG alone)."""
    driver = browser
    driver.set_window_size(*WINDOW)
    api = f"{default_backend}/api/v1"
    sample = (REPO / "data" / "samples" / "chats.jsonl").read_bytes()
    reply = httpx.post(f"{api}/uploads", files={"file": ("chats.jsonl", sample)}, timeout=60)
    upload_id = reply.json()["upload_id"]
    _job(api, reply)
    body = {"upload_id": upload_id, "model": "default", "against": "default@int8"}
    reply = httpx.post(f"{api}/diffs", json=body, timeout=60)
    diff_id = reply.json()["diff_id"]
    _job(api, reply)
    # show the Australia turn (int8 flips a top-1 there) rather than the first one
    runs = httpx.get(f"{api}/diffs/{diff_id}", timeout=60).json()["runs"]
    pick = next(i for i, r in enumerate(runs) if any(t["text"] == " Sydney" for t in r["tokens"]))
    label = f"{pick}: run {runs[pick]['run_id'][:8]} ({runs[pick]['n_tokens']} tokens)"
    driver.get(f"{ui_url}/diff?diff={diff_id}")
    _text_on_page(driver, "Most-moved tokens")
    _choose(driver, _widget(driver, "stSelectbox", "Run"), label)
    _wait_rerender(driver, lambda d: "Sydney" in d.page_source, timeout=60)
    _settle(driver, 2.5, show="//h3[contains(., 'default@int8')]")
    _save(driver, "diff")


def test_screenshot_of_the_lens_and_an_attribution(
    browser: Any,  # noqa: F811
    ui_url: str,  # noqa: F811
    default_backend: str,  # noqa: F811
) -> None:
    """The demo's "capital of Australia" run: the lens heatmap with the last layer's top-5 at
    " Sydney" (clicked) and the prompt coloured by the attribution of " Sydney"."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    driver.set_window_size(1400, 1900)
    api = f"{default_backend}/api/v1"
    body = {
        "prompt": "What is the capital of Australia?",
        "response": "The capital of Australia is Sydney, the largest city on the east coast.",
    }
    run = httpx.post(f"{api}/runs", json=body, timeout=600).json()
    response = [t for t in run["tokens"] if not t["is_prompt"]]
    column = next(i for i, t in enumerate(response) if t["text"] == " Sydney")
    sydney = response[column]["position"]
    # computed through the API first (the attribution takes minutes on a loaded CPU); the
    # click below then shows the stored one, as it would after a first click
    assert httpx.post(f"{api}/runs/{run['run_id']}/lens", timeout=600).status_code == 200
    reply = httpx.post(
        f"{api}/runs/{run['run_id']}/attributions",
        json={"position": sydney, "method": "ig", "steps": 32},
        timeout=900,
    )
    assert reply.status_code == 200, reply.text
    print(f"lens_screenshot_completeness_error={reply.json()['completeness_error']:.4f}")
    driver.get(f"{ui_url}/?run={run['run_id']}")
    n_layers = 31  # embeddings + SmolLM2-135M's 30 blocks

    def _points(d: Any) -> Any:
        for plot in d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"):
            if "log10 rank" in plot.text:
                found = plot.find_elements(By.CSS_SELECTOR, ".scatterlayer path.point")
                if len(found) == n_layers * len(response):
                    return found
        return None

    points = _wait_rerender(driver, _points, timeout=120)
    cell = points[column * n_layers + n_layers - 1]  # " Sydney" at the last layer
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    ActionChains(driver).move_to_element(cell).click().perform()
    _text_on_page(driver, f"Top-5 at layer {n_layers - 1}")
    _wait_rerender(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".tp-attr span[title]"), timeout=120
    )
    _settle(driver, 2.0, show="//*[contains(text(), 'Where the tokens came from')]")
    _save(driver, "lens")
