"""Text that DuckDB and JSON can hold: lone surrogates found at the boundary, repaired in old rows.

Below both the API (which refuses such strings with a 422) and the store (which repairs rows
stored before that rule), so neither imports the other for it.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def unencodable(value: Any, where: str = "") -> str | None:
    """The location of the first string in ``value`` that is not UTF-8 encodable (a lone
    surrogate such as ``"\\ud800"`` from a JSON escape), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "value"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable(key, where) or unencodable(item, f"{where}.{key}".lstrip("."))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unencodable(item, f"{where}[{i}]")
            if found:
                return found
    return None


def repair_text(value: Any) -> Any:
    """``value`` with every lone surrogate replaced by U+FFFD (for rows stored before the
    boundary refused them)."""
    if isinstance(value, str):
        # a str holds a surrogate code point only unpaired (pairs decode to one character)
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {repair_text(k): repair_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repair_text(v) for v in value]
    return value
