"""Read-only SQL over the token store."""

from __future__ import annotations

from typing import Any

from tokenprism.backend.api.schemas import SqlRequest
from tokenprism.backend.api.service import ServiceDep, jsonable, protected_router

router = protected_router()


@router.post("/sql", summary="One read-only SQL statement over the token store")
def sql(body: SqlRequest, svc: ServiceDep) -> dict[str, Any]:
    columns, rows, truncated = svc.store.query_read_only(body.query, max_rows=body.max_rows)
    return {
        "columns": columns,
        "rows": [[jsonable(v) for v in r] for r in rows],
        "truncated": truncated,
    }
