"""The ``--layers`` option of ``score`` and ``audit``: which hidden-state layers get geometry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from tokenprism.backend.errors import UserError

if TYPE_CHECKING:  # torch-free at import: `tokenprism --help` loads no model library
    from tokenprism.analysis.scoring import ScoringParams

LAYER_SCOPES = ("final", "all")

LayersOpt = typer.Option(
    "final",
    "--layers",
    help="effective rank of the final layer (default, with ERV/ERA) or of all layers",
)


def scoring_params(layers: str = "final") -> ScoringParams:
    """Default scoring parameters with the chosen layer scope (a 4xx-style error otherwise)."""
    from tokenprism.analysis.scoring import ScoringParams

    if layers not in LAYER_SCOPES:
        raise UserError(f"unknown --layers {layers!r}; choose final or all")
    return ScoringParams(layers=layers)  # type: ignore[arg-type]
