"""The stream trainer under differential privacy, in process against the session's MongoDB: local DP's
updates are clipped, noised and declared on the device; a device stops pushing exactly when the
accountant says its budget is spent, keeps detecting, and its spending survives a checkpoint; the
server's budget refusal (central DP) stops a device too; the statistics show it."""

from __future__ import annotations

import contextlib
import math
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from kafka.structs import TopicPartition

from flead.config import Settings
from flead.federated.cohort import TrainingCohort
from flead.federated.weights import global_norm
from flead.fleet import INTEL_LAB
from flead.local.services import free_port
from flead.model.config import TrainConfig
from flead.privacy import rdp_epsilon
from flead.schema import MEASUREMENTS
from flead.storage.mongo import get_database, make_mongo_client
from flead_dagster_tests.helpers.exchange import KEY, OPTIONS
from flead_dagster_tests.helpers.readings import SMALL, readings, records
from services.global_api.live_server import LiveServer
from services.stream_trainer.checkpoints import CheckpointStore, OwnedPartition
from services.stream_trainer.devices import Federation, privacy_summary
from services.stream_trainer.exchange import InProcessExchange
from services.stream_trainer.exchange_http import HttpExchange
from services.stream_trainer.health import Counters
from services.stream_trainer.intake import Watermarks, take_in
from services.stream_trainer.options import TrainerOptions
from services.stream_trainer.outputs import device_stats
from services.stream_trainer.state_codec import SharedWeights, slot_document, slot_from_document

Z, CLIP, DELTA = 1.0, 0.5, 1e-5
PUSH_EVERY = 128


def budget_for(updates: int) -> float:
    """A budget the accountant lets exactly `updates` releases at `Z` stay within."""
    return (rdp_epsilon(Z, updates, DELTA) + rdp_epsilon(Z, updates + 1, DELTA)) / 2


def dp_settings(settings: Settings, mode: str, budget: float | None, **extra) -> Settings:
    return settings.model_copy(
        update={
            "dp_mode": mode,
            "dp_clip_norm": CLIP,
            "dp_noise_multiplier": Z,
            "dp_delta": DELTA,
            "dp_epsilon_budget": budget,
            "trainer_push_every": PUSH_EVERY,
            "consumer_group": f"dp-{uuid.uuid4().hex[:8]}",
            **extra,
        }
    )


def federation(settings: Settings) -> Federation:
    exchange = InProcessExchange(settings, SMALL)
    options = TrainerOptions(model=SMALL, train=TrainConfig(warmup=100))
    return Federation(settings, options, exchange, Counters())


def feed(fed: Federation, slots: dict, device: str, n: int, *, start: int = 0) -> np.ndarray:
    """Stream `n` readings of `device` through its slot chunk by chunk, federating after each; the scores."""
    recs = records(readings(device, n, start=start, seed=sum(map(ord, device))))
    intake = take_in(
        {TopicPartition("t", 0): recs},
        max_bytes=65536,
        watermarks=Watermarks(10**9),
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    slot = slots.get(device) or slots.setdefault(device, fed.new_slot(device, 0))
    everyone, scores = TrainingCohort(None), []
    for run in intake.runs:
        slot.receive(run.rows, run.max_event_us)
        while slot.whole_chunks():
            fed.before_scoring(slot, everyone)
            chunk = slot.score(slot.pending.take(slot.quantum))
            fed.after_scoring(slot, chunk, everyone)
            scores.append(chunk.score)
    return np.concatenate(scores)


@contextlib.contextmanager
def checkpointed(settings: Settings, slots: dict):
    """Save the slots as partition 0's checkpoint; yields a function that restores them under other
    settings (another process's view), and deletes the group's documents after."""
    client = make_mongo_client(settings)
    db = get_database(client, settings)
    store = CheckpointStore(db, settings, {"trainer": "saver"}, SharedWeights())
    record = store.claim(0)
    part = OwnedPartition(0, record.epoch, record.gen, record.offset, record.offset, dict(slots))
    part.dirty, part.offset = set(slots), 1
    assert store.save([part], {0: 1}, {}) == []

    def restore(restorer: Settings) -> dict:
        other = CheckpointStore(db, restorer, {"trainer": "restorer"}, SharedWeights())
        loaded, unsent = other.load_slots(other.claim(0))
        assert unsent == []
        return loaded

    try:
        yield restore
    finally:
        db[settings.collection_checkpoints].delete_many({"group": settings.consumer_group})
        db[settings.collection_device_states].delete_many({"group": settings.consumer_group})
        client.close()


def test_local_dp_updates_are_noised_declared_and_stop_at_the_budget(settings):
    allowed = 3
    settings = dp_settings(settings, "local", budget_for(allowed), auto_aggregate_threshold=10_000)
    fed, slots = federation(settings), {}
    feed(fed, slots, "dev-a", 8 * PUSH_EVERY)  # room for 8 pushes
    client = slots["dev-a"].client

    sent = fed.exchange.buffer.pending()  # nothing aggregated: every accepted update waits
    assert len(sent) == allowed and fed.exchange.stats()["refused"] == 0
    size = sum(a.size for a in sent[0].arrays.values())
    sigma = Z * CLIP
    for update in sent:
        assert update.privacy == {"mechanism": "gaussian", "clip_norm": CLIP, "noise_multiplier": Z}
        # |noised| is within CLIP (the clipped delta) of |noise|, a chi of `size` degrees: sigma sqrt(size)
        # give or take a few sigma / sqrt(2). Without the noise it would be at most CLIP.
        assert abs(global_norm(update.arrays) - sigma * math.sqrt(size)) <= CLIP + 6 * sigma / math.sqrt(2)
    assert client.released == {Z: allowed} and client.budget_exhausted
    assert client.epsilon == pytest.approx(rdp_epsilon(Z, allowed, DELTA)) and client.epsilon <= budget_for(
        allowed
    )
    assert fed.exchange.buffer.ledger.epsilon("dev-a") == pytest.approx(client.epsilon)  # the server agrees

    # spent: it goes on scoring and learning on its own, and sends nothing more
    before = client.detector.get_weights()
    scores = feed(fed, slots, "dev-a", 2 * PUSH_EVERY, start=8 * PUSH_EVERY)
    assert len(scores) == 2 * PUSH_EVERY and np.isfinite(scores).all()
    assert slots["dev-a"].readings == 10 * PUSH_EVERY
    assert any(not np.array_equal(before[k], w) for k, w in client.detector.get_weights().items())
    assert len(fed.exchange.buffer.pending()) == allowed and client.sequence == allowed

    stats = device_stats(slots["dev-a"], "t", datetime.now(UTC))
    assert stats["privacy_epsilon"] == pytest.approx(client.epsilon)
    assert stats["privacy_budget_exhausted"] is True and stats["rejected_versions"] == 0
    summary = privacy_summary(slots.values(), settings.privacy())
    assert summary["mode"] == "local" and summary["devices_exhausted"] == 1
    assert summary["max_epsilon"] == pytest.approx(client.epsilon)


def test_spent_privacy_survives_a_checkpoint_and_a_raised_budget_reopens_it(settings):
    settings = dp_settings(settings, "local", budget_for(2), auto_aggregate_threshold=10_000)
    fed, slots = federation(settings), {}
    feed(fed, slots, "dev-a", 4 * PUSH_EVERY)
    feed(fed, slots, "dev-b", PUSH_EVERY)  # one update: not spent
    original = slots["dev-a"]
    assert original.client.budget_exhausted and original.client.released == {Z: 2}
    with checkpointed(settings, slots) as restore:
        back = restore(settings)
        raised = restore(settings.model_copy(update={"dp_epsilon_budget": budget_for(3)}))
    restored = back["dev-a"].client
    assert restored.released == {Z: 2} and restored.budget_exhausted
    assert restored.privacy == settings.privacy() and restored.epsilon == pytest.approx(
        original.client.epsilon
    )
    assert back["dev-b"].client.released == {Z: 1} and not back["dev-b"].client.budget_exhausted

    # the noise went into the updates only: the restored device scores as the original does
    more = readings("dev-a", PUSH_EVERY, start=4 * PUSH_EVERY, seed=7)
    rows = take_in(
        {TopicPartition("t", 0): records(more)},
        max_bytes=65536,
        watermarks=Watermarks(10**9),
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    ).runs[0]
    outputs = []
    for slot in (original, back["dev-a"]):
        slot.receive(rows.rows, rows.max_event_us)
        outputs.append(slot.score(slot.pending.take(slot.whole_chunks())).score)
    np.testing.assert_array_equal(outputs[0], outputs[1])

    # a budget raised for one more update: the device sends exactly one, then it is spent again
    assert not raised["dev-a"].client.budget_exhausted
    fed_raised = federation(settings.model_copy(update={"dp_epsilon_budget": budget_for(3)}))
    assert raised["dev-a"].lineage == fed_raised.exchange.lineage  # the same group's exchange
    feed(fed_raised, raised, "dev-a", 4 * PUSH_EVERY, start=4 * PUSH_EVERY)
    assert raised["dev-a"].client.released == {Z: 3} and raised["dev-a"].client.budget_exhausted
    assert [u.device_id for u in fed_raised.exchange.buffer.pending()] == ["dev-a"]


def test_a_state_saved_before_privacy_restores_with_nothing_spent(settings):
    settings = dp_settings(settings, "local", budget_for(1), auto_aggregate_threshold=10_000)
    fed, slots = federation(settings), {}
    feed(fed, slots, "dev-a", 3 * PUSH_EVERY)
    slot = slots["dev-a"]
    assert slot.client.budget_exhausted
    shared = SharedWeights()
    document = slot_document(
        slot, state_id="x", owner={"partition": 0}, adopted_digest=shared.digest_of(slot.client.adopted)
    )
    del document["client"]["privacy"]
    old, _ = slot_from_document(
        document, adopted=shared.get, push_every=PUSH_EVERY, privacy=settings.privacy()
    )
    assert old.client.released == {} and not old.client.budget_exhausted and old.client.rejected_versions == 0


def test_a_server_refusal_for_the_budget_stops_the_device(settings):
    """Central DP: the server charges each device per aggregation and refuses one whose budget the next
    would pass; the device learns it from the refusal, stops sending and keeps detecting."""
    settings = dp_settings(settings, "central", budget_for(2), auto_aggregate_threshold=1)
    fed, slots = federation(settings), {}
    feed(fed, slots, "dev-a", 6 * PUSH_EVERY)
    client, stats = slots["dev-a"].client, fed.exchange.stats()
    assert stats["aggregations"] == 2 and stats["refused_at_aggregation"] == stats["budget_refused"] == 1
    assert stats["devices_over_budget"] == 1 and fed.exchange.over_budget("dev-a")
    assert fed.exchange.buffer.ledger.epsilon("dev-a") == pytest.approx(rdp_epsilon(Z, 2, DELTA))
    assert client.budget_exhausted and fed.counters.get("privacy_exhausted_by_server") == 1
    # pushed: the two aggregated and the refused one; what it learned after stays on the device
    assert fed.counters.get("updates_pushed") == stats["pushed"] == 3
    assert fed.counters.get("updates_withheld") >= 2
    assert slots["dev-a"].readings == 6 * PUSH_EVERY
    assert client.released == {}  # central DP: the device itself released nothing noised
    shown = device_stats(slots["dev-a"], "t", datetime.now(UTC))
    assert shown["privacy_budget_exhausted"] is True and "privacy_epsilon" not in shown
    assert privacy_summary(slots.values(), settings.privacy())["devices_exhausted"] == 1


def test_without_dp_devices_show_no_privacy_fields(settings):
    settings = dp_settings(settings, "off", None)
    fed, slots = federation(settings), {}
    feed(fed, slots, "dev-a", PUSH_EVERY)
    assert fed.exchange.buffer.pending()[0].privacy is None
    assert not any(k.startswith("privacy") for k in device_stats(slots["dev-a"], "t", datetime.now(UTC)))
    assert privacy_summary(slots.values(), settings.privacy()) == {"mode": "off"}


def test_the_apis_budget_refusal_stops_the_device(services_env):
    """Local DP against the real global model API: the API's budget allows one update, the trainer's
    devices have none of their own; the API's refusal of the second marks the device, which sends no
    third while it keeps detecting."""
    api_settings = dp_settings(
        Settings(
            api_admin_key=KEY, api_key=KEY, api_url=f"http://127.0.0.1:{free_port()}"
        ),  # secrets validated
        "local",
        budget_for(1),
        mongo_db=f"test_trainer_dp_{uuid.uuid4().hex[:8]}",
        auto_aggregate_threshold=10_000,
    )
    server = LiveServer(api_settings).start()
    exchange = None
    try:
        trainer_settings = api_settings.model_copy(update={"dp_epsilon_budget": None})
        exchange = HttpExchange(trainer_settings, OPTIONS)
        assert exchange.open(lambda: False)
        fed = Federation(trainer_settings, OPTIONS, exchange, Counters())
        slots: dict = {}
        feed(fed, slots, "dev-a", 2 * PUSH_EVERY)  # two updates
        assert exchange.flush(20), exchange.stats()
        stats = exchange.stats()
        assert (stats["delivered"], stats["refused"], stats["budget_refused"]) == (1, 1, 1), stats
        feed(fed, slots, "dev-a", 4 * PUSH_EVERY, start=2 * PUSH_EVERY)
        assert exchange.flush(20)
        client = slots["dev-a"].client
        assert client.budget_exhausted and fed.counters.get("privacy_exhausted_by_server") == 1
        assert exchange.stats()["pushed"] == fed.counters.get("updates_pushed") == 2
        assert client.released == {Z: 2}  # the refused one reached the server: it counts
        assert slots["dev-a"].readings == 6 * PUSH_EVERY
    finally:
        if exchange is not None:
            exchange.close()
        server.stop()
        mongo = make_mongo_client(api_settings)
        mongo.drop_database(api_settings.mongo_db)
        mongo.close()
