"""docs/fidelity.md has a row for every registered metric (a new metric needs its reference)."""

from __future__ import annotations

import re
from pathlib import Path

from tokenprism.analysis.registry import list_metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "fidelity.md"


def _names_in_rows(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        names |= set(re.findall(r"`([a-z0-9_]+)`", first_cell))
        if "their `_mean`" in first_cell:  # "x, y and their `_mean`": x_mean, y_mean
            names |= {f"{n}_mean" for n in re.findall(r"`([a-z0-9_]+)`", first_cell)}
    return names


def test_every_registered_metric_has_a_fidelity_row() -> None:
    rows = _names_in_rows(DOC.read_text())
    missing = sorted(s.name for s in list_metrics() if s.name not in rows)
    assert missing == [], f"docs/fidelity.md has no row for {missing}"


def test_the_readme_links_the_fidelity_page() -> None:
    assert "docs/fidelity.md" in (DOC.parents[1] / "README.md").read_text()
