"""The idempotent MongoDB write paths the trainer uses."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


def insert_ignoring_duplicates(collection: Collection, documents: Sequence[dict]) -> int:
    """Insert documents with natural ``_id``s; ones already there are left as they are (a replay or a
    retried write). The fast idempotent path: ``insert_many(ordered=False)``. Returns how many were new."""
    if not documents:
        return 0
    try:
        return len(collection.insert_many(list(documents), ordered=False).inserted_ids)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        return exc.details.get("nInserted", 0)
