"""Explore's live view: inert embedded JSON, text only via textContent, rules as the CLI's."""

from __future__ import annotations

import json
import re

import pytest

from tokenprism.app.components.live_stream import live_payload, live_stream_html, parse_rules

PAYLOAD = "</script><script>alert(1)</script><img src=x onerror=alert(2)>&amp;"


def test_config_cannot_leave_the_json_script() -> None:
    body = {"prompt": PAYLOAD, "max_new_tokens": 8, "stop_when": []}
    doc = live_stream_html("http://127.0.0.1:8000/", "t" * 20, body, nonce=3)
    data = re.search(r"<script type='application/json' id='tp-live'>(.*?)</script>", doc, re.S)
    assert data is not None
    assert not set("<>&") & set(data.group(1))
    decoded = json.loads(data.group(1))
    assert decoded["body"]["prompt"] == PAYLOAD
    assert decoded["url"] == "http://127.0.0.1:8000/api/v1/generate/stream"
    assert decoded["token"] == "t" * 20 and decoded["nonce"] == 3
    assert doc.count("<script") == 2
    # token text, messages and markers reach the page only as text
    assert "innerHTML" not in doc and "insertAdjacentHTML" not in doc and "outerHTML" not in doc


def test_payload_offers_probe_only_when_asked_and_registry_ranges() -> None:
    plain = live_payload("http://h:1", None, {"prompt": "x"})
    assert "probe" not in plain["metrics"] and plain["token"] is None
    assert plain["specs"]["entropy"]["range"] == [0.0, 4.0]
    assert "probe" in live_payload("http://h:1", None, {"prompt": "x", "probe": "auto"})["metrics"]


def test_rules_field_parses_like_the_cli() -> None:
    rules = parse_rules(" entropy>3:3:stop ; window_entropy<0.5 ;; probe>0.8:1:mark")
    assert rules == [
        {"metric": "entropy", "op": ">", "threshold": 3.0, "patience": 3, "action": "stop"},
        {"metric": "window_entropy", "op": "<", "threshold": 0.5, "patience": 1, "action": "stop"},
        {"metric": "probe", "op": ">", "threshold": 0.8, "patience": 1, "action": "mark"},
    ]
    assert parse_rules("  ") == []
    for bad in ("entropy>>3", "entropy>3:2:explode", "nope>1"):
        with pytest.raises(ValueError):
            parse_rules(bad)
