"""Forward-only schema migrations, applied at open.

Each migration is a version number, a description and a function of a connection. A database
written by an older TokenPrism opens with a newer one: the missing migrations run in order, in
one transaction each, and ``schema_version`` records them. Never edit a released migration;
add a new one (prefer additive changes: new tables, ``ADD COLUMN``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from backend.store import schema

Migration = tuple[int, str, Callable[[sa.Connection], None]]


def _initial(conn: sa.Connection) -> None:
    for table in schema.metadata.sorted_tables:
        if table.name != "schema_version":
            table.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [
    (
        1,
        "initial schema: models, runs, tokens, token_metrics, alternatives, sequence, layer, jobs",
        _initial,
    ),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sa.Connection) -> int:
    schema.schema_version.create(conn, checkfirst=True)
    value = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
    return int(value or 0)


def migrate(engine: sa.Engine) -> int:
    """Apply every migration newer than the database; return the resulting version."""
    with engine.begin() as conn:
        version = current_version(conn)
    if version > LATEST:
        from backend.errors import UserError

        raise UserError(
            f"the database was written by a newer TokenPrism (schema {version} > {LATEST}); "
            "upgrade TokenPrism to open it"
        )
    for number, description, apply in MIGRATIONS:
        if number <= version:
            continue
        with engine.begin() as conn:
            apply(conn)
            conn.execute(
                schema.schema_version.insert().values(
                    version=number, description=description, applied_at=datetime.now(UTC)
                )
            )
        version = number
    return version
