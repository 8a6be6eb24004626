"""``--layers``: final (default) or all; anything else is a user error."""

from __future__ import annotations

import pytest

from backend.errors import UserError
from backend.scoring_options import scoring_params


def test_layers_option_maps_to_scoring_params() -> None:
    assert scoring_params().layers == "final"
    assert scoring_params("all").layers == "all"
    with pytest.raises(UserError, match="--layers"):
        scoring_params("some")
