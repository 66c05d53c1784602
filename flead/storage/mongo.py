"""pymongo client and database built from settings."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from flead.config import Settings


def make_mongo_client(settings: Settings, **overrides: Any) -> MongoClient:
    options = {
        "serverSelectionTimeoutMS": settings.mongo_server_selection_timeout_ms,
        "tz_aware": True,
        **overrides,
    }
    return MongoClient(settings.mongo_uri, **options)


def get_database(client: MongoClient, settings: Settings) -> Database:
    return client[settings.mongo_db]
