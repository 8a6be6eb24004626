"""The instant token view embeds its data as inert JSON and only sets text via textContent."""

from __future__ import annotations

import json
import re

from tokenprism.app.components.token_canvas import canvas_payload, token_canvas_html

PAYLOAD = "</script><script>alert(1)</script><img src=x onerror=alert(2)>&amp;"


def _tokens() -> list[dict[str, object]]:
    return [
        {"position": 0, "token_id": 1, "text": "Q", "is_prompt": True},
        {"position": 1, "token_id": 2, "text": PAYLOAD, "is_prompt": False, "thr": -3.0,
         "entropy": float("nan"), "top_k": [{"text": PAYLOAD, "prob": 0.4}]},
        {"position": 2, "token_id": 3, "text": " ok", "is_prompt": False, "thr": 2.0,
         "entropy": 1.0, "top_k": []},
    ]  # fmt: skip


def test_payload_cannot_leave_the_json_script() -> None:
    doc = token_canvas_html(_tokens(), ["thr", "entropy"], "thr")
    data = re.search(r"<script type='application/json' id='tp-data'>(.*?)</script>", doc, re.S)
    assert data is not None
    # no raw markup characters inside the embedded JSON, so no element can be opened or closed
    assert not set("<>&") & set(data.group(1))
    decoded = json.loads(data.group(1))
    assert decoded["tokens"][1]["text"] == PAYLOAD
    assert doc.count("<script") == 2  # the JSON block and the view's own script
    assert "innerHTML" not in doc and "insertAdjacentHTML" not in doc


def test_payload_carries_registry_facts_and_nulls_for_missing_values() -> None:
    data = canvas_payload(_tokens(), ["thr", "entropy"], "thr")
    assert data["specs"]["thr"]["signed"] is True
    assert data["specs"]["entropy"]["range"] == [0.0, 4.0]
    assert data["tokens"][1]["v"]["entropy"] is None  # NaN becomes null
    assert data["tokens"][1]["alt"] == [{"text": PAYLOAD, "prob": 0.4}]
    assert data["specs"]["entropy"]["label"] == "entropy (nats)"
    assert list(data["modes"]) == ["fixed", "run"]
    with_upload = canvas_payload(
        _tokens(), ["thr"], "thr", upload_domains={"thr": (-2.0, 1.0), "x": (float("nan"), 1.0)}
    )
    assert list(with_upload["modes"]) == ["fixed", "run", "upload"]
    assert with_upload["upload"] == {"thr": [-2.0, 1.0]}  # a non-finite domain is dropped
    only_bad = canvas_payload(_tokens(), ["thr"], "thr", upload_domains={"thr": (None, 1.0)})  # type: ignore[dict-item]
    assert "upload" not in only_bad["modes"]


def test_colours_are_one_stylesheet_not_inline_styles() -> None:
    """A repaint rewrites the colour stylesheet; no token carries its own colour."""
    doc = token_canvas_html(_tokens(), ["thr", "entropy"], "thr")
    assert "<style id='tp-colours'></style>" in doc
    assert "style.background =" not in doc.split("function legend")[0]
    assert "$('tp-colours').textContent" in doc
