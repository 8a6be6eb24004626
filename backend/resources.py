"""Files TokenPrism ships as package data, found with :mod:`importlib.resources`.

Samples, prompt sets, fact tables and probes live in ``tokenprism/data`` (in a checkout a link to
the repository's ``data/``), so a wheel installed without the checkout finds them too. Nothing
here is writable: the data home (database, model cache) is :attr:`Settings.home`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(*parts: str) -> Path:
    """Path of a shipped data file or folder, e.g. ``shipped("prompts", "refusal.jsonl")``.

    TokenPrism is installed as plain files (never zipped), so the resource is a real path that
    pandas, DuckDB and safetensors can open directly.
    """
    return Path(str(files("tokenprism").joinpath("data", *parts)))
