"""The DuckDB token store (SQLAlchemy Core + Arrow bulk loads)."""

from tokenprism.backend.store.store import Store

__all__ = ["Store"]
