"""The Diff page's pure display pieces."""

from __future__ import annotations

from tokenprism.app.components.diff import (
    kl_colour,
    kl_figure,
    model_b_name,
    most_moved_rows,
    strip_html,
)

TOKENS = [
    {"position": 0, "text": "<script>", "is_prompt": False, "kl": None, "reason": "first"},
    {"position": 1, "text": '" onmouseover="x', "is_prompt": False, "kl": 0.5, "prob_a": 0.2},
    {"position": 2, "text": "ok", "is_prompt": False, "kl": 0.0, "prob_b": 0.9},
    {"position": 3, "text": "hidden", "is_prompt": True, "kl": 9.0},
]


def test_strip_escapes_and_colours_by_kl() -> None:
    html = strip_html(TOKENS)
    assert "<script>" not in html.split("</style>", 1)[1] and "&lt;script&gt;" in html
    assert 'onmouseover="x' not in html and "&quot; onmouseover=&quot;x" in html
    assert "hidden" not in html  # prompt tokens left out by default
    assert kl_colour(0.5, 0.5) in html and kl_colour(0.0, 0.5) in html
    assert "not compared: first" in html and 'class="tok nc"' in html


def test_colour_scale_ends() -> None:
    """The app's one sequential scale: viridis light yellow at KL 0, dark purple at the top."""
    assert kl_colour(0.0, 1.0) == "rgb(253,231,37)"
    assert kl_colour(5.0, 1.0) == kl_colour(1.0, 1.0) == "rgb(68,1,84)"
    assert kl_colour(0.0, 0.0) == kl_colour(0.0, 1.0)  # nothing moved: all light
    assert kl_colour(None, 1.0) == "#d9d9d9"
    html = strip_html(TOKENS)
    assert "background:rgb(68,1,84);color:#ffffff" in html  # white text on the dark end


def test_model_b_helpers() -> None:
    assert model_b_name("default", "int8 (weight-only)", "ignored") == "default@int8"
    assert model_b_name("default", "early exit @layers=K", " 8 ") == "default@layers=8"
    assert model_b_name("m", "steering @steer=VECTOR:BETA[:LAYER]", "east:4") == "m@steer=east:4"
    assert model_b_name("default", "another model", "other/model") == "other/model"


def test_figure_and_table() -> None:
    fig = kl_figure(TOKENS)
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [None, 0.5, 0.0]
    rows = most_moved_rows(
        {
            "most_moved": [
                {
                    "run_id": "r1",
                    "position": 3,
                    "text": "a",
                    "kl": 1.0,
                    "logprob_a": 0.0,
                    "logprob_b": None,
                    "turn_index": 2,
                }
            ]
        }
    )
    assert rows == [
        {
            "token": "'a'",
            "KL": 1.0,
            "p_A": 1.0,
            "p_B": None,
            "position": 3,
            "turn": 2,
            "run": "/explore?run=r1",
        }
    ]
