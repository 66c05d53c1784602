"""The one shape of every list the API answers: ``{"items": [...], "limit": N, "next": cursor | null}``.

A page holds at most ``limit`` items; continue with ``after=<next>`` until ``next`` is null. A cursor is
opaque text made by the API: the position of the page's last item in the list's order, so a deep page
costs what the first one does and items written meanwhile neither shift nor repeat the pages. A cursor
one list made is refused (422) by another.

Lists ordered by time (anomalies, events, acknowledgements) use `anomaly_pages.PageKey` (the last
item's time and id); lists ordered by a key (versions, devices) use ``KeyCursor`` (the last item's
key).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from services.global_api.anomaly_pages import MAX_CURSOR_CHARS, InvalidCursor

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
AFTER_DESCRIPTION = "Continue after this cursor (the `next` of the previous page)."


class Page(BaseModel, Generic[T]):
    items: list[T]
    limit: int = Field(description="The most items a page holds (the request's `limit`).")
    next: str | None = Field(description="Cursor of the next page (`after=`), null on the last page.")


class KeyCursor:
    """The cursor of a list ordered by one key: ``[kind, key]``, the kind naming the list."""

    def __init__(self, kind: str, key_type: type[int] | type[str]) -> None:
        self.kind, self.key_type = kind, key_type

    def encode(self, key: int | str) -> str:
        raw = json.dumps([self.kind, key], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, text: str) -> int | str:
        problem = "is not a cursor of this list (use the `next` of its previous page)"
        if len(text) > MAX_CURSOR_CHARS:
            raise InvalidCursor(f"cursor of {len(text)} characters {problem}")
        try:
            kind, key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if kind == self.kind and type(key) is self.key_type:
                return key
        except (ValueError, TypeError, binascii.Error):
            pass
        raise InvalidCursor(f"cursor {text[:40]!r} {problem}")
