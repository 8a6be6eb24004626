"""Import purity, checked in a fresh interpreter: analysis stays pure tensor math, and the
display module the app shares with the backend loads no framework and no other backend module.

The module lists come from the tree, so a new module is checked without editing this file.
"""

from __future__ import annotations

from tests.import_probe import modules_loaded_by, tree_modules

FORBIDDEN = ("streamlit", "fastapi", "sqlalchemy", "transformers")
HEAVY = ("streamlit", "duckdb", "torch", "sqlalchemy", "fastapi", "transformers")
MODULES = tree_modules("analysis")
DISPLAY = "tokenprism.backend.display"


def test_importing_analysis_pulls_in_no_heavy_frameworks() -> None:
    assert modules_loaded_by(MODULES, FORBIDDEN) == []


def test_the_module_list_comes_from_the_tree() -> None:
    """Guard against a vacuous walk: known modules and the package itself are found."""
    assert {"tokenprism.analysis", "tokenprism.analysis.registry"} <= set(MODULES)
    assert "tokenprism.analysis.logits" in MODULES and len(MODULES) > 10
    assert "tokenprism.app.components.token_view" in tree_modules("app.components")


def test_the_shared_display_module_loads_no_framework_and_no_other_backend_module() -> None:
    loaded = modules_loaded_by((DISPLAY,), ("tokenprism", *HEAVY))
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    backend = {m for m in loaded if m.split(".")[:2] == ["tokenprism", "backend"]}
    assert backend == {"tokenprism.backend", DISPLAY}


def test_the_probe_sees_imported_modules() -> None:
    """Guard against a vacuous check: the probe reports a watched package once imported."""
    assert "email.mime" in modules_loaded_by(("email.mime.text",), ("email",))
