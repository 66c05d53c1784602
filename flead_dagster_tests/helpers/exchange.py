"""The live API and feeding helpers shared by the trainer HTTP exchange tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kafka.structs import TopicPartition

from flead.config import Settings
from flead.federated.cohort import TrainingCohort
from flead.fleet import INTEL_LAB
from flead.local.services import free_port
from flead.model.config import TrainConfig
from flead.storage.mongo import make_mongo_client
from flead_dagster_tests.helpers.readings import readings, records
from services.global_api.live_server import LiveServer
from services.stream_trainer.devices import Federation
from services.stream_trainer.intake import Watermarks, take_in
from services.stream_trainer.options import TrainerOptions

KEY = "trainer-test-key-" + uuid.uuid4().hex
OPTIONS = TrainerOptions(train=TrainConfig(warmup=100), global_poll_s=0.2, http_timeout_s=5.0)


@pytest.fixture
def api(services_env) -> Iterator[tuple[Settings, LiveServer]]:
    settings = Settings(
        mongo_db=f"test_trainer_api_{uuid.uuid4().hex[:8]}",
        api_url=f"http://127.0.0.1:{free_port()}",
        api_admin_key=KEY,
        api_key=KEY,
        auto_aggregate_threshold=2,
        trainer_push_every=128,
    )
    servers = [LiveServer(settings).start()]
    try:
        yield settings, servers
    finally:
        for server in servers:
            server.stop()
        client = make_mongo_client(settings)
        client.drop_database(settings.mongo_db)
        client.close()


def feed(federation: Federation, slots: dict, device: str, n: int, seed: int) -> None:
    """Stream `n` readings of one device through its slot, in whole chunks, federating after each."""
    intake = take_in(
        {TopicPartition("t", 0): records(readings(device, n, seed=seed))},
        max_bytes=65536,
        watermarks=Watermarks(3600),
        columns=federation.columns,
        fleet=INTEL_LAB,
    )
    slot = slots.get(device) or slots.setdefault(device, federation.new_slot(device, 0))
    everyone = TrainingCohort(None)  # these tests' few devices all train, as under the default cohort
    for run in intake.runs:
        slot.receive(run.rows, run.max_event_us)
        for _ in range(slot.whole_chunks() // slot.quantum):
            federation.before_scoring(slot, everyone)
            federation.after_scoring(slot, slot.score(slot.pending.take(slot.quantum)), everyone)
