"""The `limit` and `after` query parameters every list endpoint takes (``pages.Page`` is the answer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import Query

from services.global_api.anomaly_pages import MAX_CURSOR_CHARS
from services.global_api.pages import AFTER_DESCRIPTION, DEFAULT_LIMIT, MAX_LIMIT


class Cursor(Protocol):
    def decode(self, text: str) -> object: ...


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: str | None  # still text: each list decodes its own kind of cursor (422 for another's)

    def position(self, cursor: Cursor):
        """Where the page starts in the list's order: `after` decoded by the list's cursor, or None."""
        return None if self.after is None else cursor.decode(self.after)


def page_request(
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="The most items on the page."),
    after: str | None = Query(None, max_length=MAX_CURSOR_CHARS, description=AFTER_DESCRIPTION),
) -> PageRequest:
    return PageRequest(limit, after)
