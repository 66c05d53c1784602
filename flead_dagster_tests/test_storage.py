"""MongoDB through the flead client factory, against the real embedded SecantusDB server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pymongo.errors import DuplicateKeyError

from flead.storage.mongo import get_database, make_mongo_client


@pytest.fixture
def collection(settings, request):
    client = make_mongo_client(settings)
    coll = get_database(client, settings)[f"test_{request.node.name}"]
    coll.drop()
    yield coll
    coll.drop()
    client.close()


def test_document_round_trip(collection):
    ts = datetime(2004, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
    doc = {"_id": "mote-01:2004-03-01T12:30:15.123", "device_id": "mote-01", "ts": ts, "temperature": 19.98}
    collection.insert_one(doc)
    assert collection.find_one({"_id": doc["_id"]}) == doc
    assert collection.find_one({"_id": doc["_id"]})["ts"].tzinfo is not None


def test_natural_key_makes_replays_idempotent(collection):
    docs = [{"_id": f"mote-0{i}:1", "v": i} for i in range(5)]
    collection.insert_many(docs)
    with pytest.raises(DuplicateKeyError):
        collection.insert_one({"_id": "mote-00:1", "v": 99})
    collection.replace_one({"_id": "mote-00:1"}, {"v": 100}, upsert=True)
    assert collection.count_documents({}) == 5
    assert collection.find_one({"_id": "mote-00:1"})["v"] == 100
