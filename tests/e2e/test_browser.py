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
from typing import Any

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
    yield from _streamlit(default_backend)


@pytest.fixture(scope="module")
def no_model_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(ui url, api url)`` of a backend started with --no-model and a UI in front of it."""
    from tokenprism.backend.settings import Settings

    settings = Settings(home=tmp_path_factory.mktemp("no-model-home"), device="cpu", no_model=True)
    api, server, thread = start_backend_thread(settings)
    try:
        for ui in _streamlit(api):
            yield ui, api
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]


def _streamlit(api_url: str) -> Iterator[str]:
    """Run the Streamlit UI against ``api_url``; yields its url once it answers."""
    port = _free_port()
    proc = subprocess.Popen(
        _streamlit_command(port),
        env={**os.environ, "TOKENPRISM_API_URL": api_url},
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


def enter_canvas(driver: object, timeout: float = 90) -> None:
    """Switch into the page's (first) token view: a content-sized iframe with the run's JSON."""
    from selenium.webdriver.common.by import By

    def _frame(d: object) -> object | None:
        for frame in d.find_elements(By.CSS_SELECTOR, "iframe"):  # type: ignore[attr-defined]
            if "tp-data" in (frame.get_attribute("srcdoc") or ""):
                return frame
        return None

    frame = _wait_rerender(driver, _frame, timeout=timeout)
    driver.switch_to.frame(frame)  # type: ignore[attr-defined]


def canvas_spans(driver: object) -> list[object]:
    """The response token spans of the view the driver is in (prompt tokens left out)."""
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, "#toks .tok:not(.prompt)"))  # type: ignore[attr-defined]


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
    enter_canvas(driver)
    spans = _wait(driver, lambda d: canvas_spans(d) or None)
    assert len(spans) >= 5  # type: ignore[arg-type]
    colours = {s.value_of_css_property("background-color") for s in spans}  # type: ignore[attr-defined]
    assert len(colours) >= 2  # tokens are coloured by their entropy, not all alike
    text = "".join(s.text for s in spans)  # type: ignore[attr-defined]
    assert "Paris" in text
    driver.switch_to.default_content()  # type: ignore[attr-defined]
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
    enter_canvas(driver)
    spans = _wait(driver, lambda d: canvas_spans(d) or None)
    shown = "".join(s.text for s in spans)  # type: ignore[attr-defined]
    assert "<script>" in shown or "script" in shown  # the payload is visible as text
    assert driver.execute_script("return window.__xss === undefined")  # type: ignore[attr-defined]
    assert not driver.find_elements(By.CSS_SELECTOR, "#toks script, #toks img")  # type: ignore[attr-defined]
    driver.switch_to.default_content()  # type: ignore[attr-defined]
    assert driver.execute_script("return window.__xss === undefined")  # type: ignore[attr-defined]
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
    enter_canvas(driver)
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#toks .tok:not(.prompt)")) >= n)
    elapsed = time.perf_counter() - began
    recolour = driver.execute_script("return window.tpRecolour('prob', 'run')")  # type: ignore[attr-defined]
    driver.switch_to.default_content()  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "render-2000.txt").write_text(f"tokens={n} seconds_to_all_spans={elapsed:.2f}\n")
    print(f"\n{n}-token run: all token spans on screen {elapsed:.2f} s after navigation")
    print(f"recolour_ms_in_app={recolour:.1f}")
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


def _open_first_turn(driver: object, failure_shot: str) -> None:
    """Tick the first row of the Audit page's turn table and wait for its detail."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

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
            return
        except TimeoutException:
            continue
    _shot(driver, failure_shot)
    raise AssertionError("selecting the turn in the table did not open it")


def test_audit_with_ccp_colours_a_turn_by_ccp(
    browser: object, ui_url: str, default_backend: str, tmp_path: Path
) -> None:
    """Upload with CCP chosen, open the scored turn, colour its tokens by CCP."""
    import re

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
    _open_first_turn(driver, "audit-ccp-no-selection.png")
    assert "CCP judge:" in driver.page_source  # type: ignore[attr-defined]
    enter_canvas(driver)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "metric")).select_by_value("ccp")  # type: ignore[attr-defined]
    assert "ccp" in driver.find_element(By.ID, "desc").text  # type: ignore[attr-defined]
    spans = canvas_spans(driver)
    assert "Paris" in driver.find_element(By.ID, "toks").text  # type: ignore[attr-defined]
    with_ccp = []
    for span in spans[1:6]:  # the pop-over gives each token's CCP
        ActionChains(driver).move_to_element(span).perform()  # type: ignore[arg-type]
        pop = driver.find_element(By.ID, "pop").text  # type: ignore[attr-defined]
        if re.search(r"^ccp\s*-?[0-9]", pop, re.MULTILINE):
            with_ccp.append(pop)
    assert len(with_ccp) >= 3, with_ccp
    driver.switch_to.default_content()  # type: ignore[attr-defined]
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
    switches = (("prob", "fixed"), ("thr", "run"), ("entropy", "run"), ("thr", "fixed"))
    # until the new colours are computed for every token ...
    times = [
        driver.execute_script("return window.tpRecolour(arguments[0], arguments[1])", m, mode)  # type: ignore[attr-defined]
        for m, mode in switches
    ]
    # ... and until the frame that shows them has been painted
    frames = [
        driver.execute_async_script(  # type: ignore[attr-defined]
            "window.tpRecolourFrame(arguments[0], arguments[1], arguments[2])", m, mode
        )
        for m, mode in (("prob", "run"), *switches)
    ]
    worst = max(times)
    (ARTIFACTS / "recolour_ms.txt").write_text(
        "\n".join(f"recolour_ms={t:.1f}" for t in times)
        + "\n"
        + "\n".join(f"recolour_frame_ms={t:.1f}" for t in frames)
        + "\n",
        encoding="utf-8",
    )
    print(f"recolour_ms_2000_tokens_max={worst:.1f}")
    print(f"recolour_frame_ms_2000_tokens_max={max(frames):.1f}")
    assert worst < 5000 and max(frames) < 5000  # sanity only; the target (< 200 ms) is reported
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
        "return [40, 90, 5].map(i => getComputedStyle(s[i]).backgroundColor);"
    )
    assert colours[0] != colours[1]
    assert colours[2] in ("rgba(0, 0, 0, 0)", "transparent")  # a prompt token stays uncoloured
    ActionChains(driver).move_to_element(spans[30]).perform()  # type: ignore[index]
    pop = driver.find_element(By.ID, "pop")  # type: ignore[attr-defined]
    assert pop.is_displayed() and "top alternatives" in pop.text
    _shot(driver, "instant_view.png")


# the band's two traces (their y values) and the fills plotly drew, from the page's charts
_BAND_JS = """
for (const p of document.querySelectorAll('.js-plotly-plot')) {
  const d = p.data || [];
  const lo = d.find(t => t.name === 'entropy_lower');
  const up = d.find(t => t.name === 'entropy_upper');
  if (lo && up) return [Array.from(lo.y), Array.from(up.y), p.querySelectorAll('.js-fill').length];
}
return null;
"""


def _logprobs_file(path: Path) -> list[float]:
    """A logged Chat Completions request and response with top-3 logprobs (the last token
    sampled outside its top-3); returns the tokens' probabilities."""
    from tests.unit.test_logprobs_formats import _entry

    tokens = [
        ("The", 0.62, [("The", 0.62), ("Its", 0.2), ("A", 0.1)]),
        (" capital", 0.55, [(" capital", 0.55), (" largest", 0.25), (" main", 0.1)]),
        (" of", 0.97, [(" of", 0.97), (" city", 0.01), (",", 0.005)]),
        (" France", 0.9, [(" France", 0.9), (" the", 0.05), (" Europe", 0.01)]),
        (" is", 0.8, [(" is", 0.8), (" was", 0.1), (" remains", 0.05)]),
        (" Paris", 0.41, [(" Paris", 0.41), (" Lyon", 0.3), (" Nice", 0.1)]),
        (".", 0.03, [("!", 0.5), (",", 0.3), (" and", 0.1)]),
    ]
    content = "".join(t for t, _, _ in tokens)
    response = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": {"content": [_entry(t, p, top) for t, p, top in tokens]},
            }
        ],
    }
    request = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    path.write_text(json.dumps({"request": request, "response": response}) + "\n")
    return [p for _, p, _ in tokens]


def test_audit_page_shows_api_logprobs_with_the_entropy_band(
    browser: object, no_model_ui: tuple[str, str], tmp_path: Path
) -> None:
    """A --no-model server audits a Chat Completions logprobs file; the Audit page shows every
    token's probability and draws the entropy band."""
    import re

    from selenium.webdriver.common.by import By

    ui, api = no_model_ui
    driver = browser
    path = tmp_path / f"api-logprobs-{time.time_ns()}.jsonl"
    probs = _logprobs_file(path)
    driver.get(ui + "/audit")  # type: ignore[attr-defined]
    upload = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[type='file']"))
    upload.send_keys(str(path))  # type: ignore[attr-defined]
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

    def _job(_: object) -> dict[str, object] | None:
        ups = httpx.get(f"{api}/api/v1/uploads").json()["uploads"]
        mine = [u for u in ups if u["filename"] == path.name and u.get("job_id")]
        if not mine:
            return None
        job = httpx.get(f"{api}/api/v1/jobs/{mine[0]['job_id']}").json()
        assert job["status"] in ("queued", "running", "done"), job
        return job if job["status"] == "done" else None

    job = _wait(driver, _job, timeout=60)
    assert job["params"]["source"] == "logprobs"  # type: ignore[index]
    _wait_rerender(
        driver,
        lambda d: (
            "Turns by risk" in d.page_source
            and "No turn of this upload is scored yet" not in d.page_source
        ),
        timeout=30,
    )
    _open_first_turn(driver, "audit-logprobs-no-selection.png")
    enter_canvas(driver)
    from selenium.webdriver.common.action_chains import ActionChains

    spans = _wait_rerender(driver, lambda d: canvas_spans(d) or None)
    assert len(spans) == len(probs)  # type: ignore[arg-type]
    shown = []
    for span in spans:  # type: ignore[attr-defined]
        ActionChains(driver).move_to_element(span).perform()  # type: ignore[arg-type]
        pop = driver.find_element(By.ID, "pop").text  # type: ignore[attr-defined]
        found = re.search(r"(?:^|\s)prob\s+([-+0-9.e]+)", pop)
        assert found, pop
        shown.append(float(found.group(1)))
        assert "true entropy in [" in pop
    assert shown == pytest.approx(probs, rel=1e-5)
    driver.switch_to.default_content()  # type: ignore[attr-defined]
    assert "source: API logprobs (chat)" in driver.page_source  # type: ignore[attr-defined]
    band: list[Any] = _wait_rerender(  # type: ignore[assignment]
        driver, lambda d: d.execute_script(_BAND_JS), timeout=30
    )
    lower, upper, fills = band
    assert len(lower) == len(upper) == len(probs)
    assert all(lo <= up for lo, up in zip(lower, upper, strict=True))
    assert fills >= 1  # the band is drawn as a filled area
    header = driver.find_element(By.XPATH, "//h3[contains(., 'Turn detail')]")  # type: ignore[attr-defined]
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", header)  # type: ignore[attr-defined]
    time.sleep(1.0)  # let the chart finish drawing before the screenshot
    _shot(driver, "audit-logprobs.png")
