"""The idempotent MongoDB write paths the trainer uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


@contextlib.contextmanager
def duplicates_ignored() -> Iterator[None]:
    """Around an ``ordered=False`` bulk write: a duplicate key leaves that document as it is (already
    written, or guarded against us); any other write error is raised."""
    try:
        yield
    except BulkWriteError as exc:
        if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
            raise


def insert_ignoring_duplicates(collection: Collection, documents: Sequence[dict]) -> None:
    """Insert documents with natural ``_id``s; ones already there are left as they are (a replay or a
    retried write). The fast idempotent path: ``insert_many(ordered=False)``."""
    if documents:
        with duplicates_ignored():
            collection.insert_many(list(documents), ordered=False)
