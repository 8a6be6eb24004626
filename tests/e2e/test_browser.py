"""End to end in a real headless Chromium: backend + Streamlit on loopback, driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them with apt when
it can); without them this test is skipped with the reason printed. Screenshots land in
``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, SHARED_MODEL_CACHE, start_backend_thread
from tokenprism.backend.cli.serve import _streamlit_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="BROWSER TEST SKIPPED: Debian packages chromium and chromium-driver are not "
        "installed (apt-get install chromium chromium-driver)",
    ),
]

PAYLOAD = '<script>window.__xss = 1</script> and <img src=x onerror="window.__xss = 2">'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def default_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real default model behind a loopback API, so the colours are meaningful."""
    from tokenprism.backend.settings import Settings

    settings = Settings(
        home=tmp_path_factory.mktemp("browser-home"), model_cache=SHARED_MODEL_CACHE, device="cpu"
    )
    url, server, thread = start_backend_thread(settings)
    try:
        yield url
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def ui_url(default_backend: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        _streamlit_command(port),
        env={**os.environ, "TOKENPRISM_API_URL": default_backend},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "streamlit did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: object, condition: object, timeout: float = 90) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)  # type: ignore[arg-type]


def _shot(driver: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))  # type: ignore[attr-defined]


def test_score_a_prompt_and_see_coloured_tokens(browser: object, ui_url: str) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(ui_url)  # type: ignore[attr-defined]
    prompt = _wait(
        driver, lambda d: d.find_element(By.CSS_SELECTOR, "textarea[aria-label='Prompt']")
    )
    prompt.send_keys("What is the capital of France?")  # type: ignore[attr-defined]
    response = driver.find_element(  # type: ignore[attr-defined]
        By.CSS_SELECTOR, "textarea[aria-label^='Response to score']"
    )
    response.send_keys("The capital of France is Paris.")
    button = next(
        b
        for b in driver.find_elements(By.TAG_NAME, "button")  # type: ignore[attr-defined]
        if b.text.strip() == "Run"
    )
    button.click()
    spans = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".tp-tokens span[title]"))
    assert len(spans) >= 5  # type: ignore[arg-type]
    colours = {s.value_of_css_property("background-color") for s in spans}  # type: ignore[attr-defined]
    assert len(colours) >= 2  # tokens are coloured by their entropy, not all alike
    text = "".join(s.text for s in spans)  # type: ignore[attr-defined]
    assert "Paris" in text
    time.sleep(1.0)  # let the charts draw before the screenshot
    _shot(driver, "explore.png")


def test_xss_payload_in_a_transcript_stays_text(
    browser: object, ui_url: str, default_backend: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    transcript = tmp_path / "xss.jsonl"
    transcript.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Repeat this: " + PAYLOAD},
                    {"role": "assistant", "content": "Sure: " + PAYLOAD},
                ]
            }
        )
        + "\n"
    )
    driver.get(ui_url + "/audit")  # type: ignore[attr-defined]
    upload = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[type='file']"))
    upload.send_keys(str(transcript))  # type: ignore[attr-defined]
    time.sleep(1.0)
    button = _wait(
        driver,
        lambda d: next(
            (
                b
                for b in d.find_elements(By.TAG_NAME, "button")
                if b.text.strip() == "Upload and audit"
            ),
            None,
        ),
    )
    button.click()  # type: ignore[attr-defined]
    _wait(driver, lambda d: "Turns by risk" in d.page_source)
    _shot(driver, "audit.png")
    runs = httpx.get(f"{default_backend}/api/v1/runs", params={"q": "window.__xss"}).json()["runs"]
    assert runs, "the uploaded turn was not stored"
    driver.get(f"{ui_url}/?run={runs[0]['run_id']}")  # type: ignore[attr-defined]
    spans = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".tp-tokens span[title]"))
    shown = "".join(s.text for s in spans)  # type: ignore[attr-defined]
    assert "<script>" in shown or "script" in shown  # the payload is visible as text
    assert driver.execute_script("return window.__xss === undefined")  # type: ignore[attr-defined]
    assert not driver.find_elements(By.CSS_SELECTOR, ".tp-tokens script, .tp-tokens img")  # type: ignore[attr-defined]
    _shot(driver, "xss.png")


def test_a_2000_token_run_renders(browser: object, ui_url: str, default_backend: str) -> None:
    """Measured, not asserted: the time from navigation to the last token span on screen."""
    from selenium.webdriver.common.by import By

    words = " ".join(f"The number {i} follows {i - 1}." for i in range(1, 190))
    run = httpx.post(f"{default_backend}/api/v1/runs", json={"text": words}, timeout=600).json()
    n = sum(not t["is_prompt"] for t in run["tokens"])
    assert n >= 2000
    driver = browser
    began = time.perf_counter()
    driver.get(f"{ui_url}/?run={run['run_id']}")  # type: ignore[attr-defined]
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tp-tokens span[title]")) >= n)
    elapsed = time.perf_counter() - began
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "render-2000.txt").write_text(f"tokens={n} seconds_to_all_spans={elapsed:.2f}\n")
    print(f"\n{n}-token run: all token spans on screen {elapsed:.2f} s after navigation")
    # the page stays responsive: switching the colour metric re-renders the strip
    assert driver.execute_script("return document.readyState") == "complete"  # type: ignore[attr-defined]


def _wait_rerender(driver: object, condition: object, timeout: float = 30) -> object:
    """:func:`_wait` that also retries while Streamlit swaps the elements it is looking at."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, timeout, ignored_exceptions=ignored)  # type: ignore[type-var]
    return wait.until(condition)  # type: ignore[arg-type]


def _widget(driver: object, testid: str, label: str) -> object:
    """The Streamlit widget of kind ``testid`` (e.g. stSelectbox) whose label is ``label``."""
    from selenium.webdriver.common.by import By

    return _wait_rerender(
        driver,
        lambda d: next(
            (
                w
                for w in d.find_elements(By.CSS_SELECTOR, f"[data-testid='{testid}']")
                if w.find_element(By.CSS_SELECTOR, "[data-testid='stWidgetLabel']").text.strip()
                == label
            ),
            None,
        ),
        timeout=30,
    )


def _choose(driver: object, widget: object, option: str) -> None:
    """Open a select / multiselect, type ``option`` and click the matching entry."""
    from selenium.webdriver.common.by import By

    box = widget.find_element(By.CSS_SELECTOR, "input[role='combobox']")  # type: ignore[attr-defined]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)  # type: ignore[attr-defined]
    box.click()
    box.send_keys(option)
    entry = _wait_rerender(
        driver,
        lambda d: next(
            (
                o
                for o in d.find_elements(By.CSS_SELECTOR, "[role='option']")
                if o.text.strip() == option
            ),
            None,
        ),
        timeout=15,
    )
    entry.click()  # type: ignore[attr-defined]


def test_audit_with_ccp_colours_a_turn_by_ccp(
    browser: object, ui_url: str, default_backend: str, tmp_path: Path
) -> None:
    """Upload with CCP chosen, open the scored turn, colour its tokens by CCP."""
    import re

    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    marker = f"ccp-{time.time_ns()}"
    transcript = tmp_path / f"{marker}.jsonl"
    transcript.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is the capital of France? ({marker})"},
                    {"role": "assistant", "content": "The capital of France is Paris."},
                ]
            }
        )
        + "\n"
    )
    driver.get(ui_url + "/audit")  # type: ignore[attr-defined]
    upload = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[type='file']"))
    upload.send_keys(str(transcript))  # type: ignore[attr-defined]
    extras = _widget(driver, "stMultiSelect", "Uncertainty & hallucination metrics")
    _choose(driver, extras, "ccp")
    _wait(driver, lambda _: "ccp" in extras.text, timeout=10)  # type: ignore[attr-defined]
    button = _wait(
        driver,
        lambda d: next(
            (
                b
                for b in d.find_elements(By.TAG_NAME, "button")
                if b.text.strip() == "Upload and audit"
            ),
            None,
        ),
    )
    button.click()  # type: ignore[attr-defined]

    # the upload's job, found through the API, asked for CCP and finishes
    def _job(_: object) -> dict[str, object] | None:
        ups = httpx.get(f"{default_backend}/api/v1/uploads").json()["uploads"]
        mine = [u for u in ups if u["filename"] == transcript.name and u.get("job_id")]
        if not mine:
            return None
        job = httpx.get(f"{default_backend}/api/v1/jobs/{mine[0]['job_id']}").json()
        assert job["status"] in ("queued", "running", "done"), job
        return job if job["status"] == "done" else None

    job = _wait(driver, _job, timeout=60)
    assert "ccp" in json.dumps(job["params"])  # type: ignore[index]
    # the page reloads itself when the job ends and lists our upload's single turn
    _wait_rerender(
        driver,
        lambda d: (
            "Turns by risk" in d.page_source
            and "No turn of this upload is scored yet" not in d.page_source
        ),
        timeout=30,
    )
    for _attempt in range(3):  # the grid can be redrawn under the pointer: retry the click
        time.sleep(1.0)  # let the grid settle before clicking on its canvas
        table = _wait_rerender(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stDataFrame']")
        )
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", table)  # type: ignore[attr-defined]
        # tick the first row's selection box (the grid is a canvas: click by position)
        size = table.size  # type: ignore[attr-defined]
        ActionChains(driver).move_to_element_with_offset(  # type: ignore[arg-type]
            table,  # type: ignore[arg-type]
            -size["width"] // 2 + 18,
            -size["height"] // 2 + 35 + 17,
        ).click().perform()
        try:
            _wait_rerender(driver, lambda d: "Turn detail" in d.page_source, timeout=15)
            break
        except TimeoutException:
            continue
    else:
        _shot(driver, "audit-ccp-no-selection.png")
        raise AssertionError("selecting the turn in the table did not open it")
    colour_by = _widget(driver, "stSelectbox", "Colour tokens by")
    _choose(driver, colour_by, "ccp")

    def _ccp_titles(d: object) -> list[str] | None:
        spans = d.find_elements(By.CSS_SELECTOR, ".tp-tokens span[title]")  # type: ignore[attr-defined]
        titles = [s.get_attribute("title") or "" for s in spans]
        with_ccp = [t for t in titles if re.search(r"^ccp -?[0-9]", t, re.MULTILINE)]
        return with_ccp or None

    titles = _wait_rerender(driver, _ccp_titles, timeout=30)
    assert len(titles) >= 3  # type: ignore[arg-type]
    assert "Paris" in driver.find_element(By.CSS_SELECTOR, ".tp-tokens").text  # type: ignore[attr-defined]
    assert "CCP judge:" in driver.page_source  # type: ignore[attr-defined]
    _shot(driver, "audit-ccp.png")


def test_groups_page_samples_a_group_and_draws_its_prefix_tree(
    browser: object, ui_url: str, default_backend: str
) -> None:
    """Pick a shipped prompt, sample a small group, see the prefix tree as a plotly icicle."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    shipped = httpx.get(f"{default_backend}/api/v1/groups/prompts").json()
    chosen = next(p for p in shipped if p["id"] == "sum")
    before = {g["group_id"] for g in httpx.get(f"{default_backend}/api/v1/groups").json()["groups"]}
    driver.get(ui_url + "/groups")  # type: ignore[attr-defined]
    pick = _widget(driver, "stSelectbox", "Shipped prompt")
    _choose(driver, pick, f"{chosen['id']} · {chosen['kind']} · {chosen['verifier']}")
    # the shipped prompt and its verifier fill the (editable) fields
    _wait_rerender(
        driver,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "textarea[aria-label='Prompt']").get_attribute("value")
            == chosen["prompt"]
        ),
        timeout=15,
    )
    for label, value in (("Responses (n)", "2"), ("Max new tokens", "8")):
        box = _widget(driver, "stNumberInput", label).find_element(By.CSS_SELECTOR, "input")  # type: ignore[attr-defined]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.ENTER)
        _wait_rerender(
            driver,
            lambda d, label=label, value=value: (
                _widget(d, "stNumberInput", label)
                .find_element(By.CSS_SELECTOR, "input")
                .get_attribute("value")
                == value
            ),
            timeout=15,
        )
    button = _wait_rerender(
        driver,
        lambda d: next(
            (b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Sample group"),
            None,
        ),
    )
    button.click()  # type: ignore[attr-defined]

    def _new_group(_: object) -> dict[str, object] | None:
        groups = httpx.get(f"{default_backend}/api/v1/groups").json()["groups"]
        fresh = [g for g in groups if g["group_id"] not in before]
        return fresh[0] if fresh else None

    group = _wait(driver, _new_group, timeout=90)  # ~20 s on a quiet 2-core CPU
    assert group["prompt"] == chosen["prompt"] and group["n"] == 2  # type: ignore[index]
    assert group["verifier"] == chosen["verifier"]  # type: ignore[index]
    # the page reloads itself when the job ends and draws the group's prefix tree
    _wait_rerender(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .iciclelayer g.slice"),
        timeout=30,
    )
    assert (
        "all 2 responses"
        in driver.find_element(  # type: ignore[attr-defined]
            By.CSS_SELECTOR, ".js-plotly-plot .iciclelayer"
        ).text
    )
    time.sleep(0.5)  # let the remaining charts draw before the screenshot
    _shot(driver, "groups.png")


def test_lab_runs_a_refusal_sweep_and_an_east_sweep(
    browser: object, ui_url: str, default_backend: str
) -> None:
    """A refusal-bias sweep and an EAST beta sweep from the lab page, each drawn as a curve."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    api = f"{default_backend}/api/v1"
    seen = {e["experiment_id"] for e in httpx.get(f"{api}/experiments").json()["experiments"]}

    def _set(testid: str, label: str, value: str) -> None:
        box = _widget(driver, testid, label).find_element(By.CSS_SELECTOR, "input")  # type: ignore[attr-defined]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)  # type: ignore[attr-defined]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.ENTER)
        _wait_rerender(
            driver,
            lambda d: (
                _widget(d, testid, label)
                .find_element(By.CSS_SELECTOR, "input")
                .get_attribute("value")
                == value
            ),
            timeout=15,
        )

    def _run_and_wait(kind: str) -> dict[str, object]:
        button = _wait_rerender(
            driver,
            lambda d: next(
                (
                    b
                    for b in d.find_elements(By.TAG_NAME, "button")
                    if b.text.strip() == "Run experiment"
                ),
                None,
            ),
        )
        button.click()  # type: ignore[attr-defined]

        def _finished(_: object) -> dict[str, object] | None:
            rows = httpx.get(f"{api}/experiments").json()["experiments"]
            fresh = [e for e in rows if e["experiment_id"] not in seen and e["kind"] == kind]
            return fresh[0] if fresh and fresh[0]["finished"] else None

        row = _wait(driver, _finished, timeout=90)
        seen.add(row["experiment_id"])  # type: ignore[index]
        experiment: dict[str, object] = httpx.get(
            f"{api}/experiments/{row['experiment_id']}"  # type: ignore[index]
        ).json()
        return experiment

    def _chart_with(text: str) -> object:
        """The plotly chart whose drawn text (axis titles, legend) contains ``text``."""
        return _wait_rerender(
            driver,
            lambda d: next(
                (p for p in d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot") if text in p.text),
                None,
            ),
            timeout=45,
        )

    driver.get(ui_url + "/lab")  # type: ignore[attr-defined]
    # the refusal sweep is the default kind, on the two typed default prompts
    _set("stTextInput", "Bias values", "0, 8")
    _set("stNumberInput", "Max new tokens", "8")
    refusal = _run_and_wait("refusal-sweep")
    params = refusal["params"]
    assert params["values"] == [0.0, 8.0] and params["max_new_tokens"] == 8  # type: ignore[index]
    assert [p["should_refuse"] for p in params["prompts"]] == [False, True]  # type: ignore[index]
    assert len(refusal["outputs"]) == 4  # type: ignore[arg-type]
    chart = _chart_with("refusal rate")
    drawn = chart.text  # type: ignore[attr-defined]
    assert "mean P(refusal)" in drawn and "should refuse" in drawn and "benign" in drawn
    assert driver.find_elements(By.CSS_SELECTOR, ".tp-compare")  # type: ignore[attr-defined]
    _shot(driver, "lab-refusal.png")

    _choose(driver, _widget(driver, "stSelectbox", "Experiment kind"), "EAST steering sweep")
    _set("stTextInput", "Betas", "0, 8")
    _set("stNumberInput", "Max new tokens", "8")
    east = _run_and_wait("east-sweep")
    params = east["params"]
    assert params["betas"] == [0.0, 8.0] and len(params["prompts"]) == 2  # type: ignore[index, arg-type]
    assert len(east["outputs"]) == 4  # type: ignore[arg-type]
    chart = _chart_with("next-token entropy")
    assert "entropy (nats)" in chart.text  # type: ignore[attr-defined]
    time.sleep(0.5)  # let the remaining charts draw before the screenshot
    _shot(driver, "lab-east.png")


def test_diff_page_diffs_the_default_model(browser: object, ui_url: str) -> None:
    """The Diff page: default vs its early exit after 24 of 30 blocks (fast on a CPU; the
    int8 variant is checked from the CLI in test_diff_default.py) on a text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(f"{ui_url}/diff")  # type: ignore[attr-defined]
    text = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "textarea[aria-label='Text']"))
    text.send_keys(  # type: ignore[attr-defined]
        "The capital of France is Paris. It is known for the Eiffel Tower, its museums and "
        "fine food. About two million people live in the city <b>itself</b>."
    )
    _choose(driver, _widget(driver, "stSelectbox", "Model B"), "early exit @layers=K")
    arg = _widget(driver, "stTextInput", "Argument / other model")
    box = arg.find_element(By.CSS_SELECTOR, "input")  # type: ignore[attr-defined]
    box.send_keys("24", Keys.TAB)
    button = next(
        b
        for b in driver.find_elements(By.TAG_NAME, "button")  # type: ignore[attr-defined]
        if b.text.strip() == "Run diff"
    )
    button.click()
    spans = _wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".tp-diff span[title]"), timeout=300
    )
    assert len(spans) >= 10  # type: ignore[arg-type]
    colours = {s.value_of_css_property("background-color") for s in spans}  # type: ignore[attr-defined]
    assert len(colours) >= 3  # coloured by KL, which varies token to token
    titles = [s.get_attribute("title") for s in spans]  # type: ignore[attr-defined]
    assert all("p_A" in t and "p_B" in t for t in titles)
    assert not driver.find_elements(By.CSS_SELECTOR, ".tp-diff b")  # type: ignore[attr-defined]
    page = driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
    assert "default@layers=24" in page and "mean KL" in page and "Most-moved tokens" in page
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), timeout=60)
    time.sleep(1.5)  # let the chart and the table draw before the screenshot
    _shot(driver, "diff.png")


def _canvas_tokens(n: int) -> list[dict[str, object]]:
    """A 2,000-token-sized run: signed THR around 0, entropy, a payload token, top-k."""
    import math

    tokens: list[dict[str, object]] = []
    for i in range(n):
        text = PAYLOAD if i == 7 else (" word" if i % 9 else "\n")
        tokens.append(
            {
                "position": i,
                "token_id": 100 + i % 50,
                "text": text,
                "is_prompt": i < 20,
                "entropy": (i % 37) / 9.0,
                "prob": 1.0 / (1 + i % 11),
                "logprob": -math.log(1 + i % 11),
                "rank": 1 + i % 11,
                "thr": math.sin(i / 13.0) * (41.0 if i % 3 else 5.0),
                "top_k": [{"text": " a", "prob": 0.5}, {"text": PAYLOAD, "prob": 0.2}],
            }
        )
    return tokens


def test_instant_view_recolours_in_the_browser(browser: object) -> None:
    """Recolouring 2,000 tokens happens in the page; time it and check THR's legend centre."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from tokenprism.app.components.token_canvas import token_canvas_html

    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "instant_view.html"
    doc = token_canvas_html(_canvas_tokens(2000), ["entropy", "prob", "thr", "rank"], "entropy")
    page.write_text(doc, encoding="utf-8")
    driver = browser
    driver.get(page.as_uri())  # type: ignore[attr-defined]
    spans = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#toks .tok"))
    assert len(spans) == 2000  # type: ignore[arg-type]
    assert driver.execute_script("return window.__xss") is None  # type: ignore[attr-defined]
    assert not driver.find_elements(By.CSS_SELECTOR, "#toks img, #toks script")  # type: ignore[attr-defined]
    times = [
        driver.execute_script("return window.tpRecolour(arguments[0], arguments[1])", m, mode)  # type: ignore[attr-defined]
        for m, mode in (("prob", "fixed"), ("thr", "run"), ("entropy", "run"), ("thr", "fixed"))
    ]
    worst = max(times)
    (ARTIFACTS / "recolour_ms.txt").write_text(
        "\n".join(f"recolour_ms={t:.1f}" for t in times) + "\n", encoding="utf-8"
    )
    print(f"recolour_ms_2000_tokens_max={worst:.1f}")
    assert worst < 5000  # sanity only; the target (< 200 ms) is reported, not asserted
    # THR is signed: its legend runs from -m to +m, with the zero mark in the middle
    lo = float(driver.find_element(By.ID, "lo").text)  # type: ignore[attr-defined]
    hi = float(driver.find_element(By.ID, "hi").text)  # type: ignore[attr-defined]
    assert lo == -hi and hi > 0
    zero = driver.find_element(By.ID, "zero")  # type: ignore[attr-defined]
    ramp = driver.find_element(By.ID, "ramp")  # type: ignore[attr-defined]
    assert zero.is_displayed()
    centre = ramp.rect["x"] + ramp.rect["width"] / 2
    assert abs(zero.rect["x"] - centre) <= 2
    # negative and positive THR in different hues
    colours = driver.execute_script(  # type: ignore[attr-defined]
        "const s=[...document.querySelectorAll('#toks .tok')];"
        "return [s[40].style.background, s[90].style.background];"
    )
    assert colours[0] != colours[1]
    ActionChains(driver).move_to_element(spans[30]).perform()  # type: ignore[index]
    pop = driver.find_element(By.ID, "pop")  # type: ignore[attr-defined]
    assert pop.is_displayed() and "top alternatives" in pop.text
    _shot(driver, "instant_view.png")
