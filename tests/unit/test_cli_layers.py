"""``--layers``: final (default) or all; anything else is a user error."""

from __future__ import annotations

import pytest

from tokenprism.backend.cli.layers import scoring_params
from tokenprism.backend.errors import UserError


def test_layers_option_maps_to_scoring_params() -> None:
    assert scoring_params().layers == "final"
    assert scoring_params("all").layers == "all"
    with pytest.raises(UserError, match="--layers"):
        scoring_params("some")
