"""pymongo client and database built from settings."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from flead.config import Settings

DUPLICATE_KEY = 11000


def mongo_client_options(settings: Settings) -> dict[str, Any]:
    """pymongo keyword arguments from the settings. TLS and credentials are only passed when set, so
    options written into ``mongo_uri`` (e.g. ``?tls=true``) are not overridden by defaults."""
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": settings.mongo_server_selection_timeout_ms,
        "tz_aware": True,
    }
    if settings.mongo_tls:
        options["tls"] = True
        if settings.mongo_tls_ca_file is not None:
            options["tlsCAFile"] = str(settings.mongo_tls_ca_file)
    if settings.mongo_username:
        options["username"] = settings.mongo_username
        options["password"] = settings.mongo_password.get_secret_value()
    return options


def make_mongo_client(settings: Settings, **overrides: Any) -> MongoClient:
    return MongoClient(settings.mongo_uri, **{**mongo_client_options(settings), **overrides})


def get_database(client: MongoClient, settings: Settings) -> Database:
    return client[settings.mongo_db]


def insert_new(collection: Collection, documents: list[dict]) -> list[int]:
    """``insert_many(ordered=False)``: every document whose ``_id`` is new goes in; returns the indexes of
    those whose ``_id`` existed (any other write error is raised)."""
    if not documents:
        return []
    try:
        collection.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        return sorted(error["index"] for error in errors)
    return []
