"""TokenPrism backend: model loading, scoring runner, DuckDB store and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenprism")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
