"""The stream trainer's building blocks, in process: buffering, watermarks, chunked scoring, state
documents and federation. The properties here are what make a restarted trainer exact."""

from __future__ import annotations

import base64
import contextlib
import gc
import itertools
import uuid
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from kafka.structs import TopicPartition

from flead.config import Settings
from flead.federated import ClientConfig, GlobalState
from flead.federated.cohort import TrainingCohort
from flead.federated.wire import global_state_fields, global_state_from_fields, read_legacy_global_state
from flead.fleet import INTEL_LAB
from flead.model.config import ModelConfig, TrainConfig
from flead.schema import MEASUREMENTS
from flead.storage.mongo import get_database, make_mongo_client
from flead_dagster_tests.helpers.readings import SMALL, readings, records
from services.stream_trainer.checkpoints import CheckpointStore, OwnedPartition
from services.stream_trainer.devices import Federation, PendingReadings, reading_dtype
from services.stream_trainer.exchange import InProcessExchange
from services.stream_trainer.health import Counters
from services.stream_trainer.intake import Watermarks, take_in
from services.stream_trainer.options import TrainerOptions
from services.stream_trainer.state_codec import SharedWeights, slot_document, slot_from_document

TRAIN = TrainConfig(warmup=100)


def polls(recs: list, cuts: list[int], partition: int = 0) -> list[dict]:
    bounds = [0, *cuts, len(recs)]
    tp = TopicPartition("t", partition)
    return [{tp: recs[a:b]} for a, b in itertools.pairwise(bounds) if b > a]


def federation(settings: Settings, **options) -> Federation:
    exchange = InProcessExchange(settings, SMALL)
    return Federation(settings, TrainerOptions(model=SMALL, train=TRAIN, **options), exchange, Counters())


def run_polls(
    fed: Federation,
    batches: list[dict],
    watermarks: Watermarks,
    cohort: TrainingCohort | None = None,
    slots: dict | None = None,
) -> tuple[dict, dict]:
    """Feed polls through intake and one slot per device (`slots`: those to go on with), scoring whole
    chunks only (the devices admitted by `cohort`, one partition's); returns the slots and each
    device's scores in order."""
    cohort = fed.new_cohort() if cohort is None else cohort
    slots, scores = {} if slots is None else slots, {}
    for batch in batches:
        intake = take_in(batch, max_bytes=65536, watermarks=watermarks, columns=MEASUREMENTS, fleet=INTEL_LAB)
        for run in intake.runs:
            slot = slots.get(run.device_id) or slots.setdefault(
                run.device_id, fed.new_slot(run.device_id, run.partition)
            )
            slot.receive(run.rows, run.max_event_us)
            if slot.whole_chunks():
                fed.before_scoring(slot, cohort)
                chunk = slot.score(slot.pending.take(slot.whole_chunks()))
                fed.after_scoring(slot, chunk, cohort)
                scores[run.device_id] = np.concatenate([scores.get(run.device_id, []), chunk.score])
    return slots, scores


def test_pending_buffer_keeps_order_across_take_and_bytes():
    dtype = reading_dtype(2)
    buffer = PendingReadings(dtype)
    rows = np.zeros(150, dtype)
    rows["offset"] = np.arange(150)
    buffer.extend(rows[:100])
    buffer.extend(rows[100:])
    assert buffer.take(64)["offset"].tolist() == list(range(64))
    restored = PendingReadings.from_bytes(buffer.to_bytes(), dtype)
    assert len(restored) == 86 and restored.rows()["offset"].tolist() == list(range(64, 150))
    with pytest.raises(ValueError):
        restored.take(87)


def test_late_readings_depend_on_the_stream_not_on_the_poll_boundaries():
    frame = readings("dev-a", 40)
    late_row = frame.slice(5, 1)  # 35 readings * 31 s behind the latest: late with 60 s allowed
    slightly_late = frame.slice(38, 1)  # 31 s behind: on time
    stream = pl.concat([frame, late_row, slightly_late])
    recs = records(stream)
    for cuts in ([], [10, 40], [41]):
        watermarks = Watermarks(60.0)
        late = []
        for batch in polls(recs, cuts):
            intake = take_in(
                batch, max_bytes=65536, watermarks=watermarks, columns=MEASUREMENTS, fleet=INTEL_LAB
            )
            late += intake.late
        assert [r.offset for r in late] == [40], cuts
        assert late[0].value == recs[40].value and late[0].reason.startswith("late: ")
        assert watermarks.max_event_us[0] == int(frame["ts"][-1].timestamp() * 1e6)


def test_invalid_records_are_rejected_and_the_valid_ones_grouped_by_device():
    frame = pl.concat([readings("dev-a", 3), readings("dev-b", 2)]).sort("ts")
    recs = records(frame)
    recs.insert(2, recs[0]._replace(offset=99, value=b"{not json"))
    intake = take_in(
        {TopicPartition("t", 0): recs},
        max_bytes=65536,
        watermarks=Watermarks(60),
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    assert [r.offset for r in intake.invalid] == [99]
    assert {run.device_id: len(run.rows) for run in intake.runs} == {"dev-a": 3, "dev-b": 2}
    assert intake.next_offsets == {0: recs[-1].offset + 1}


def test_chunked_scoring_is_identical_however_the_stream_is_polled(settings):
    recs = records(pl.concat([readings("dev-a", 700, seed=1), readings("dev-b", 500, seed=2)]).sort("ts"))
    reference_slots, reference = run_polls(federation(settings), polls(recs, []), Watermarks(3600))
    other_slots, other = run_polls(
        federation(settings), polls(recs, [1, 77, 300, 301, 999]), Watermarks(3600)
    )
    # whole chunks of 64 only; the rest waits in the buffers
    assert {d: len(s) for d, s in reference.items()} == {"dev-a": 640, "dev-b": 448}
    for device in reference:
        np.testing.assert_array_equal(reference[device], other[device])
    for device, slot in reference_slots.items():
        assert slot.client.detector.to_bytes() == other_slots[device].client.detector.to_bytes()
        assert len(slot.pending) == len(other_slots[device].pending) == (60 if device == "dev-a" else 52)


def score_the_same(recs: list, *slots) -> list:
    """Each slot's scored chunk of the same readings (one device's, one poll)."""
    intake = take_in(
        {TopicPartition("t", 0): recs},
        max_bytes=65536,
        watermarks=Watermarks(3600),
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    outputs = []
    for slot in slots:
        slot.receive(intake.runs[0].rows, intake.runs[0].max_event_us)
        outputs.append(slot.score(slot.pending.take(slot.whole_chunks())))
    return outputs


@contextlib.contextmanager
def checkpoint_store(settings: Settings):
    """A CheckpointStore of a consumer group of its own (its documents deleted after)."""
    settings = settings.model_copy(update={"consumer_group": f"ckpt-{uuid.uuid4().hex[:8]}"})
    client = make_mongo_client(settings)
    db = get_database(client, settings)
    try:
        yield CheckpointStore(db, settings, {"trainer": "test"}, SharedWeights()), db, settings
    finally:
        db[settings.collection_checkpoints].delete_many({"group": settings.consumer_group})
        db[settings.collection_device_states].delete_many({"group": settings.consumer_group})
        client.close()


def owned_partition(store: CheckpointStore, slots: dict) -> OwnedPartition:
    record = store.claim(0)
    part = OwnedPartition(0, record.epoch, record.gen, record.offset, record.offset, dict(slots))
    part.dirty = set(slots)
    return part


def restored(settings: Settings, db) -> tuple[dict, object]:
    """The partition's devices as another process restores them, and its checkpoint record."""
    store = CheckpointStore(db, settings, {"trainer": "restorer"}, SharedWeights())
    record = store.claim(0)
    slots, unsent = store.load_slots(record)
    assert unsent == []
    return slots, record


@pytest.mark.parametrize("proximal_mu", [0.0, 0.1])
def test_a_device_state_document_resumes_bit_identically(settings, proximal_mu):
    fed = federation(settings)
    fed.exchange.client_config = ClientConfig(proximal_mu=proximal_mu)
    recs = records(readings("dev-a", 1000, seed=3))
    slots, _ = run_polls(fed, polls(recs[:700], []), Watermarks(3600))
    original = slots["dev-a"]
    with checkpoint_store(settings) as (store, db, group_settings):
        part = owned_partition(store, slots)
        part.offset = 700
        assert store.save([part], {0: 1}, {}) == []
        back = restored(group_settings, db)[0]["dev-a"]
    assert back.client.adopted is not original.client.adopted  # read back, not the same object
    assert len(back.pending) == len(original.pending) == 700 - 640
    assert (back.readings, back.client.base_version, back.last_event_us) == (
        original.readings,
        original.client.base_version,
        original.last_event_us,
    )
    assert (back.client.anchor is back.client.adopted) == (proximal_mu > 0)

    outputs = score_the_same(recs[700:], original, back)
    np.testing.assert_array_equal(outputs[0].score, outputs[1].score)
    np.testing.assert_array_equal(outputs[0].is_anomaly, outputs[1].is_anomaly)
    assert original.client.detector.to_bytes() == back.client.detector.to_bytes()


def test_a_device_that_only_received_readings_costs_no_state_document(settings):
    """Waiting readings are checkpointed in the partition's buffer documents: a device that only
    received since the last checkpoint keeps its state document, restores with every waiting reading,
    and the superseded (or orphaned) buffer documents are deleted."""
    fed = federation(settings)
    recs_a, recs_b = records(readings("dev-a", 800, seed=3)), records(readings("dev-b", 800, seed=4))
    one_day = Watermarks(86_400)  # dev-b's readings follow dev-a's, from the same start
    slots, _ = run_polls(fed, polls(recs_a[:700] + recs_b[:650], []), one_day)
    with checkpoint_store(settings) as (store, db, group_settings):
        states, buffers = db[group_settings.collection_device_states], {"kind": "buffers"}
        buffers["group"] = group_settings.consumer_group
        part = owned_partition(store, slots)
        part.offset = 1350
        assert store.save([part], {0: 1}, {}) == []
        first = states.find_one({"_id": slots["dev-a"].state_id})
        assert store.cost.last["buffered_devices"] == 2 and states.count_documents(buffers) == 1

        # three more readings for dev-a (63 waiting: still short of a chunk), none for dev-b
        intake = take_in(
            {TopicPartition("t", 0): recs_a[700:703]},
            max_bytes=65536,
            watermarks=Watermarks(3600),
            columns=MEASUREMENTS,
            fleet=INTEL_LAB,
        )
        slots["dev-a"].receive(intake.runs[0].rows, intake.runs[0].max_event_us)
        part.received, part.offset = {"dev-a"}, 1353
        assert part.changed() and not part.dirty
        assert store.save([part], {0: 2}, {}) == []
        assert store.cost.last["devices"] == 0  # no state document written
        assert states.find_one({"_id": slots["dev-a"].state_id}) == first
        assert states.count_documents(buffers) == 1  # the first checkpoint's buffer document deleted

        states.insert_one({"_id": "orphan", **buffers, "topic": store.topic, "partition": 0})
        back, record = restored(group_settings, db)
        assert record.buffer_ids == part.buffer_ids and store.remove_orphans(record) == 1
        assert states.count_documents(buffers) == 1
    for device_id, waiting in (("dev-a", 63), ("dev-b", 650 - 640)):
        assert len(back[device_id].pending) == waiting
        np.testing.assert_array_equal(back[device_id].pending.rows(), slots[device_id].pending.rows())
        assert back[device_id].last_event_us == slots[device_id].last_event_us
    outputs = score_the_same(recs_a[703:], slots["dev-a"], back["dev-a"])
    np.testing.assert_array_equal(outputs[0].score, outputs[1].score)


def test_devices_push_every_n_samples_and_adopt_the_aggregated_version(services_env, monkeypatch):
    monkeypatch.setenv("FLEAD_TRAINER_PUSH_EVERY", "128")
    monkeypatch.setenv("FLEAD_AUTO_AGGREGATE_THRESHOLD", "2")
    fed = federation(Settings())
    recs = records(pl.concat([readings("dev-a", 256, seed=4), readings("dev-b", 256, seed=5)]).sort("ts"))
    slots, _ = run_polls(fed, polls(recs, list(range(64, 512, 64))), Watermarks(3600))
    stats = fed.exchange.stats()
    assert stats["accepted"] >= 2 and stats["aggregations"] >= 1 and stats["global_version"] >= 1
    assert fed.counters.get("updates_pushed") == stats["pushed"]
    for slot in slots.values():  # both adopted an aggregated version (v0 was the initial one)
        assert slot.client.base_version >= 1 and slot.lineage == fed.exchange.lineage
        assert slot.client.sequence >= 2
    fresh = fed.new_slot("dev-c", 0)
    assert fresh.client.base_version == fed.exchange.buffer.version
    # a first adoption keeps no private copies of the global weights
    assert fresh.client.reported is fresh.client.adopted and fresh.client.anchor is None


def test_a_fenced_owner_can_neither_commit_nor_overwrite_the_new_owners_state(settings):
    settings = settings.model_copy(update={"consumer_group": f"fence-{uuid.uuid4().hex[:8]}"})
    client = make_mongo_client(settings)
    db = get_database(client, settings)
    old_store = CheckpointStore(db, settings, {"trainer": "old"}, SharedWeights())
    new_store = CheckpointStore(db, settings, {"trainer": "new"}, SharedWeights())
    fed = federation(settings)
    slots, _ = run_polls(fed, polls(records(readings("dev-a", 100)), []), Watermarks(3600))

    def owned(store: CheckpointStore) -> OwnedPartition:
        record = store.claim(0)
        loaded, _ = store.load_slots(record)
        part = OwnedPartition(
            0, record.epoch, record.gen, record.offset, record.offset, loaded or dict(slots)
        )
        part.dirty = set(part.slots)
        return part

    try:
        old = owned(old_store)
        old.offset = 100
        assert old_store.save([old], {0: 1}, {}) == []  # committed: copy "a"
        new = owned(new_store)  # claims: the epoch moves on, the old owner is fenced
        assert new.committed_offset == 100 and new.slots["dev-a"].readings == 64
        new.offset, new.slots["dev-a"].readings = 150, 99
        assert new_store.save([new], {0: 2}, {}) == []  # writes copy "b"
        old.offset, old.slots["dev-a"].readings = 170, 12345
        old.dirty = {"dev-a"}
        assert old_store.save([old], {0: 3}, {}) == [
            0
        ]  # refused, and copy "b" left as the new owner wrote it
        record = new_store.claim(0)
        restored, _ = new_store.load_slots(record)
        assert (record.offset, record.max_event_us, restored["dev-a"].readings) == (150, 2, 99)
    finally:
        db[settings.collection_checkpoints].delete_many({"group": settings.consumer_group})
        db[settings.collection_device_states].delete_many({"group": settings.consumer_group})
        client.close()


# A global model as a trainer's checkpoint kept it before one form (a `flead-global-state` container,
# written by the code of commit 2f75b49): version 3 of parent 2, two weights and fedavgm's momentum.
LEGACY_GLOBAL_STATE = (
    "RkxFQUROTgC6AQAAeyJmb3JtYXQiOiJmbGVhZC1nbG9iYWwtc3RhdGUiLCJmb3JtYXRfdmVyc2lvbiI6MSwidmVyc2lvbiI6Myw"
    "icGFyZW50X3ZlcnNpb24iOjIsImNyZWF0ZWRfYXQiOiIyMDI2LTEyLTAxVDEwOjMwOjE1LjEyMzQ1NiswMDowMCIsImFyY2hpdG"
    "VjdHVyZSI6eyJraW5kIjoiYXV0b2VuY29kZXIiLCJmZWF0dXJlcyI6WyJ0ZW1wZXJhdHVyZSJdLCJpbnB1dHMiOltdLCJ3aW5kb"
    "3ciOjIsImhpZGRlbiI6WzNdLCJhY3RpdmF0aW9uIjoidGFuaCIsInRpbWVfZmVhdHVyZXMiOnRydWUsImlucHV0X2NsaXAiOjgu"
    "MCwibWluX3N0ZCI6WzAuMDFdfSwiZHR5cGUiOiI8ZjQiLCJhcnJheXMiOlt7Im5hbWUiOiJ3fGVuYy4wLlciLCJzaGFwZSI6WzI"
    "sM119LHsibmFtZSI6Ind8ZW5jLjAuYiIsInNoYXBlIjpbM119LHsibmFtZSI6InN8bW9tZW50dW18ZW5jLjAuVyIsInNoYXBlIj"
    "pbMiwzXX1dfQAAAAAlSRI+JUmSPrdt2z4lSRI/bts2PwAAAD8AAKC/AABAQAAAAD4AAAA+AAAAPgAAAD4AAAA+AAAAPg=="
)


def assert_legacy_state(state: GlobalState) -> None:
    assert (state.version, state.parent_version) == (3, 2)
    assert state.created_at == datetime(2026, 12, 1, 10, 30, 15, 123456, tzinfo=UTC)
    np.testing.assert_array_equal(state.weights["enc.0.W"], np.arange(6, dtype="f4").reshape(2, 3) / 7)
    np.testing.assert_array_equal(state.weights["enc.0.b"], np.array([0.5, -1.25, 3.0], "f4"))
    assert list(state.server_state) == ["momentum"]
    np.testing.assert_array_equal(state.server_state["momentum"]["enc.0.W"], np.full((2, 3), 0.125, "f4"))


def test_a_global_model_checkpointed_in_the_old_format_still_loads(settings):
    state, architecture = read_legacy_global_state(base64.b64decode(LEGACY_GLOBAL_STATE))
    assert_legacy_state(state)
    assert ModelConfig.from_dict(architecture) == ModelConfig(
        window=2, hidden=(3,), features=("temperature",)
    )
    # the one form of a global state, the API's and the trainer's, carries it unchanged
    fields = global_state_fields(state)
    assert_legacy_state(global_state_from_fields(3, fields))

    settings = settings.model_copy(update={"consumer_group": f"legacy-{uuid.uuid4().hex[:8]}"})
    client = make_mongo_client(settings)
    store = CheckpointStore(get_database(client, settings), settings, {"trainer": "t"}, SharedWeights())
    try:
        # as the trainer of 2f75b49 saved it
        store.checkpoints.insert_one(
            {
                "_id": store.global_id(),
                "kind": "global-model",
                "lineage": "local:x",
                "version": 3,
                "state": base64.b64decode(LEGACY_GLOBAL_STATE),
            }
        )
        assert store.load_global("local:other") is None  # another lineage's
        assert_legacy_state(store.load_global("local:x"))
        newer = GlobalState(4, state.weights, state.server_state, state.created_at, parent_version=3)
        store.save_global(newer, ModelConfig(window=2, hidden=(3,), features=("temperature",)), "local:x")
        loaded = store.load_global("local:x")  # written in the one form now
        assert "state" not in store.checkpoints.find_one({"_id": store.global_id()})
        assert (loaded.version, loaded.parent_version) == (4, 3)
        np.testing.assert_array_equal(
            loaded.server_state["momentum"]["enc.0.W"], np.full((2, 3), 0.125, "f4")
        )
    finally:
        store.checkpoints.delete_one({"_id": store.global_id()})
        client.close()


def test_exchange_option_defaults_from_the_settings(monkeypatch):
    from typer.testing import CliRunner

    import services.stream_trainer.service as service
    from flead_cli import app

    chosen = []

    class Recorder:
        def __init__(self, settings, options):
            chosen.append(settings.trainer_exchange)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(service, "StreamTrainer", Recorder)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # the trainer's process tuning, not pytest's
    monkeypatch.setattr(gc, "set_threshold", lambda *thresholds: None)
    runner = CliRunner()
    monkeypatch.delenv("FLEAD_TRAINER_EXCHANGE", raising=False)
    assert runner.invoke(app, ["trainer", "run"]).exit_code == 0
    monkeypatch.setenv("FLEAD_TRAINER_EXCHANGE", "http")
    assert runner.invoke(app, ["trainer", "run"]).exit_code == 0
    assert runner.invoke(app, ["trainer", "run", "--exchange", "local"]).exit_code == 0
    assert chosen == ["local", "http", "local"]
    monkeypatch.setenv("FLEAD_TRAINER_EXCHANGE", "carrier-pigeon")
    refused = runner.invoke(app, ["trainer", "run"])
    assert refused.exit_code == 2 and "FLEAD_TRAINER_EXCHANGE='carrier-pigeon'" in refused.output


@pytest.mark.parametrize("mu", [0.0, 0.1])
def test_an_adopting_device_holds_no_private_copy_of_the_global_weights(mu):
    exchange = InProcessExchange(Settings(), SMALL, client_config=ClientConfig(proximal_mu=mu))
    federation = Federation(Settings(), TrainerOptions(model=SMALL, train=TRAIN), exchange, Counters())
    client = federation.new_slot("dev-a", 0).client
    adopted = exchange.latest(None).weights
    assert client.adopted is adopted and client.reported is adopted
    assert client.anchor is (adopted if mu else None)  # FedProx only


def test_a_cohort_of_one_trains_in_turns_and_resting_devices_store_no_weights(settings, monkeypatch):
    monkeypatch.setenv("FLEAD_TRAINER_PUSH_EVERY", "128")
    monkeypatch.setenv("FLEAD_TRAINER_TRAINING_DEVICES", "1")
    fed = federation(Settings())
    cohort = fed.new_cohort()
    assert cohort.size == 1  # the process's 1 over the topic's 8 partitions, rounded up
    frame = pl.concat([readings(f"dev-{d}", 512, seed=10 + i) for i, d in enumerate("abc")]).sort("ts")
    slots, _ = run_polls(fed, polls(records(frame), list(range(64, 1536, 64))), Watermarks(3600), cohort)
    private = [s for s in slots.values() if not s.client.detector.weights_shared]
    assert len(private) <= 1 and len(cohort.training) <= 1
    assert all(s.client.sequence >= 1 for s in slots.values())  # each took its turn and pushed
    resting = next(s for s in slots.values() if s.client.detector.weights_shared)
    shared = SharedWeights()
    digest = shared.digest_of(resting.client.adopted)
    document = slot_document(resting, state_id="x", owner={"partition": 0}, adopted_digest=digest)
    network_bytes = resting.client.detector.model.network.size * 4
    full = resting.client.detector.to_bytes()
    assert len(full) - len(document["detector"]) >= network_bytes  # the adopted weights, by digest
    restored, _ = slot_from_document(document, adopted=shared.get, push_every=128)
    assert restored.client.detector.weights_shared and not restored.client.training
    outputs = score_the_same(records(readings("dev-x", 64, seed=99)), resting, restored)
    np.testing.assert_array_equal(outputs[0].score, outputs[1].score)


def test_a_partitions_training_cohort_is_checkpointed_with_it(settings, monkeypatch):
    """Who trains and who waits, in order, is saved with the partition: a restored partition admits
    the devices an uninterrupted one would, so a restart equals no restart with a cohort smaller
    than the fleet."""
    monkeypatch.setenv("FLEAD_TRAINER_PUSH_EVERY", "128")
    monkeypatch.setenv("FLEAD_TRAINER_TRAINING_DEVICES", "1")
    frame = pl.concat([readings(f"dev-{d}", 768, seed=20 + i) for i, d in enumerate("abcd")]).sort("ts")
    batches = polls(records(frame), list(range(64, 3072, 64)))
    runs = []
    for _ in range(2):  # the uninterrupted run, and the one to restart
        fed = federation(Settings())
        cohort = fed.new_cohort()
        slots, _ = run_polls(fed, batches[:25], Watermarks(3600), cohort)
        runs.append((fed, cohort, slots))
    (fed_a, cohort_a, slots_a), (fed_b, cohort_b, slots_b) = runs
    assert len(cohort_b.training) == 1 and len(cohort_b.waiting) >= 2  # mid-stream, devices queued
    with checkpoint_store(settings.model_copy(update={"trainer_push_every": 128})) as (
        store,
        db,
        group_settings,
    ):
        part = owned_partition(store, slots_b)
        part.cohort, part.offset = cohort_b, 1600
        assert store.save([part], {0: 1}, {}) == []
        back, record = restored(group_settings, db)
    restored_cohort = fed_b.new_cohort(record.cohort)
    assert restored_cohort.state_dict() == cohort_a.state_dict()
    _, scores = run_polls(fed_a, batches[25:], Watermarks(3600), cohort_a, slots_a)
    _, scores_back = run_polls(fed_b, batches[25:], Watermarks(3600), restored_cohort, back)
    assert set(scores) == {f"dev-{d}" for d in "abcd"}
    for device_id, score in scores.items():
        np.testing.assert_array_equal(score, scores_back[device_id])
    assert {d: s.client.sequence for d, s in slots_a.items()} == {
        d: s.client.sequence for d, s in back.items()
    }
