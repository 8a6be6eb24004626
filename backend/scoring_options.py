"""The ``--layers`` option of ``score`` and ``audit``: which hidden-state layers get geometry."""

from __future__ import annotations

import typer

from analysis.scoring import ScoringParams
from backend.errors import UserError

LAYER_SCOPES = ("final", "all")

LayersOpt = typer.Option(
    "final",
    "--layers",
    help="effective rank of the final layer (default, with ERV/ERA) or of all layers",
)


def scoring_params(layers: str = "final") -> ScoringParams:
    """Default scoring parameters with the chosen layer scope (a 4xx-style error otherwise)."""
    if layers not in LAYER_SCOPES:
        raise UserError(f"unknown --layers {layers!r}; choose final or all")
    return ScoringParams(layers=layers)  # type: ignore[arg-type]
