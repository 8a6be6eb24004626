"""The one refusal of a file uploaded twice (transcripts and API-logprob files alike).

The same content for the same model is never scored again: the reply names the earlier upload
and its job, links to it, and points to the route that adds metric families to it.
"""

from __future__ import annotations

from typing import Any

from tokenprism.backend.errors import UserError
from tokenprism.backend.store import Store
from tokenprism.backend.store.records import find_upload

API_PREFIX = "/api/v1"


class DuplicateUpload(UserError):
    """The file was uploaded before (409 ``duplicate_upload``); ``details`` name the upload."""

    def __init__(self, existing: dict[str, Any]) -> None:
        upload_id = existing["upload_id"]
        add = f"{API_PREFIX}/uploads/{upload_id}/metrics"
        super().__init__(
            f"this file was already uploaded on {existing['created_at']} as {upload_id} "
            f"({existing['filename']}); nothing was re-scored. To add metric families "
            f"(ccp, probe, sar, selfcheck) to it, POST {add} (the Audit page's "
            "'Add metrics' button)"
        )
        self.details: dict[str, Any] = {
            "upload_id": upload_id,
            "job_id": existing["job_id"],
            "n_items": existing["n_items"],
            "format": existing["format"],
            "links": {"upload": f"{API_PREFIX}/uploads/{upload_id}", "add_metrics": add},
        }


def refuse_duplicate(store: Store, digest: str, model: str) -> None:
    """Raise :class:`DuplicateUpload` when ``digest`` was uploaded for ``model`` before."""
    existing = find_upload(store, digest, model)
    if existing is not None:
        raise DuplicateUpload(existing)
