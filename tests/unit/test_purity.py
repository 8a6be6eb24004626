"""The analysis package stays pure tensor math: no UI, web, database or model libraries."""

from __future__ import annotations

from tests.import_probe import modules_loaded_by

FORBIDDEN = ("streamlit", "fastapi", "sqlalchemy", "transformers")
MODULES = (
    "analysis",
    "analysis.logits",
    "analysis.windows",
    "analysis.sequence",
    "analysis.steps",
    "analysis.geometry",
    "analysis.scoring",
    "analysis.registry",
    "analysis.types",
    "analysis.probe",
    "analysis.ccp",
    "analysis.claims",
    "analysis.sar",
    "analysis.selfcheck",
    "analysis.thr",
    "analysis.critical",
    "analysis.verifiers",
    "analysis.prefix_tree",
    "analysis.steering",
    "analysis.decoding",
)


def test_importing_analysis_pulls_in_no_heavy_frameworks() -> None:
    assert modules_loaded_by(MODULES, FORBIDDEN) == []


def test_the_probe_sees_imported_modules() -> None:
    """Guard against a vacuous check: the probe reports a watched package once imported."""
    assert "email.mime" in modules_loaded_by(("email.mime.text",), ("email",))
