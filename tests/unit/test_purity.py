"""The analysis package stays pure tensor math: no UI, web, database or model libraries."""

from __future__ import annotations

from tests.import_probe import modules_loaded_by

FORBIDDEN = ("streamlit", "fastapi", "sqlalchemy", "transformers")
MODULES = (
    "analysis",
    "tokenprism.analysis.logits",
    "tokenprism.analysis.windows",
    "tokenprism.analysis.sequence",
    "tokenprism.analysis.steps",
    "tokenprism.analysis.geometry",
    "tokenprism.analysis.scoring",
    "tokenprism.analysis.registry",
    "tokenprism.analysis.types",
    "tokenprism.analysis.probe",
    "tokenprism.analysis.ccp",
    "tokenprism.analysis.claims",
    "tokenprism.analysis.sar",
    "tokenprism.analysis.selfcheck",
    "tokenprism.analysis.thr",
    "tokenprism.analysis.critical",
    "tokenprism.analysis.verifiers",
    "tokenprism.analysis.prefix_tree",
    "tokenprism.analysis.steering",
    "tokenprism.analysis.decoding",
)


def test_importing_analysis_pulls_in_no_heavy_frameworks() -> None:
    assert modules_loaded_by(MODULES, FORBIDDEN) == []


def test_the_probe_sees_imported_modules() -> None:
    """Guard against a vacuous check: the probe reports a watched package once imported."""
    assert "email.mime" in modules_loaded_by(("email.mime.text",), ("email",))
