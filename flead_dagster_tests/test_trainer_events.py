"""The running trainer judges every device from its first reading once its partition has a fleet
calibration, counts what it judged and what it could not, and writes alarms as events: one event per
lasting fault, served by /api/events, and the same events after a kill -9 mid-event and a restart as
in an uninterrupted run. Real trainer processes, the real broker and MongoDB, the real API over HTTP."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from flead_dagster_tests.helpers.api import api_harness
from flead_dagster_tests.helpers.trainer import (
    STEP,
    T0,
    Trainer,
    checkpoint_offsets,
    create_topics,
    device_stats,
    documents,
    isolated_env,
    offsets_total,
    paced_replay,
    settings_for,
    stationary,
    twin_envs,
    wait_until,
)

TRAINER_ARGS = ("--flush-idle", "3600")  # partial chunks stay buffered: no time-dependent scoring
FAULT = slice(1500, 2500)  # a lasting fault: 1,000 readings


def test_short_lived_devices_are_judged_and_a_newcomer_from_its_first_reading(services_env, tmp_path):
    env = isolated_env(services_env)
    settings = settings_for(env)
    create_topics(settings)
    # 384 readings (6 chunks) each: none gets near its own calibration (warm-up 200 + 1,000 readings)
    fleet = stationary([f"short-{i:02d}" for i in range(64)], 384, seed=1)
    newcomers = stationary([f"new-{i}" for i in range(6)], 128, seed=2, first=384)
    trainer = Trainer(env, tmp_path, *TRAINER_ARGS)
    trainer.wait_for(lambda h: len(h["partitions"]) == 4, 60, "partitions assigned")
    paced_replay(settings, fleet, seconds=3).join()
    health = trainer.wait_for(
        lambda h: offsets_total(h, "checkpointed_offsets") == fleet.height, 90, "the fleet checkpointed"
    )
    assert all(p["fitted"] for p in health["fleet_calibration"].values()), health["fleet_calibration"]
    paced_replay(settings, newcomers, seconds=1).join()
    total = fleet.height + newcomers.height
    health = trainer.wait_for(
        lambda h: offsets_total(h, "checkpointed_offsets") == total, 90, "the newcomers checkpointed"
    )
    counters = health["counters"]
    assert counters["judged"] + counters["unjudged"] == counters["scored"] == total  # whole chunks only
    assert counters["judged"] > 0.35 * total  # before: 0 (no device reaches its own calibration)
    assert health["thresholds"] == {"own": 0, "fleet": 70, "none": 0}
    stats = device_stats(settings)
    for doc in stats.values():
        assert doc["judged"] + doc["unjudged"] == doc["readings"]
        assert doc["unjudged_reasons"] == {"no calibration yet": doc["unjudged"]}
        assert doc["threshold_source"] == "fleet", doc
    for i in range(6):  # judged from their first reading: the partition's calibration existed
        assert stats[f"new-{i}"]["judged"] == 128 and stats[f"new-{i}"]["unjudged"] == 0
    beat = wait_until(
        lambda: next(
            iter(documents(settings, settings.collection_services, {"pid": trainer.process.pid})), None
        ),
        30,
        "a heartbeat",
    )
    assert {"judged", "unjudged"} <= set(beat["counters"]) and "thresholds" in beat
    assert trainer.stop() == 0, trainer.tail()


def faulty_fleet() -> pl.DataFrame:
    """12 steady devices; dev-00 reports an impossible temperature for 1,000 readings (a rule fault),
    dev-01's temperature is 1.5 degrees (5 noise stds) off for 1,000 readings (a model fault)."""
    frame = stationary([f"dev-{i:02d}" for i in range(12)], 3000, seed=3)
    index = pl.int_range(pl.len()).over("device_id")
    in_fault = (index >= FAULT.start) & (index < FAULT.stop)
    return frame.with_columns(
        pl.when(in_fault & (pl.col("device_id") == "dev-00"))
        .then(122.0)
        .when(in_fault & (pl.col("device_id") == "dev-01"))
        .then(pl.col("temperature") + 1.5)
        .otherwise(pl.col("temperature"))
        .alias("temperature")
    )


def comparable(events: list[dict]) -> dict[str, dict]:
    """Events without what says who wrote them, when, and in which group (the lineage names it)."""
    return {
        e["_id"]: {k: v for k, v in e.items() if k not in ("trainer", "updated_at", "model_lineage")}
        for e in events
    }


def test_a_lasting_fault_is_one_event_and_kill_9_mid_event_changes_no_event(services_env, tmp_path: Path):
    frame = faulty_fleet()
    total = frame.height
    uninterrupted, restarted = twin_envs(services_env)
    settings_a, settings_b = settings_for(uninterrupted), settings_for(restarted)

    a = Trainer(uninterrupted, tmp_path, *TRAINER_ARGS, name="a")
    b = Trainer(restarted, tmp_path, *TRAINER_ARGS, name="b1")
    for t in (a, b):
        t.wait_for(lambda h: len(h["partitions"]) == 4, 60, "partitions assigned")
    producer = paced_replay(settings_a, frame, seconds=15)
    try:
        # mid-fault: dev-00's rule event is open in the checkpoint the restart resumes from
        b.wait_for(
            lambda h: (
                total * 0.6 < offsets_total(h, "checkpointed_offsets") < min(offsets_total(h), total * 0.75)
            ),
            90,
            "a checkpoint in the middle of the faults, and progress after it",
        )
        open_now = [e for e in documents(settings_b, settings_b.collection_events) if e["open"]]
        b.kill()
        checkpointed = sum(v or 0 for v in checkpoint_offsets(settings_b).values())
        b = Trainer(restarted, tmp_path, *TRAINER_ARGS, name="b2")
    finally:
        producer.join()
    for t in (a, b):
        t.wait_for(
            lambda h: offsets_total(h, "checkpointed_offsets") == total, 120, "everything checkpointed"
        )
    assert b.health()["counters"]["records_in"] == total - checkpointed
    assert a.stop() == 0 and b.stop() == 0, a.tail() + b.tail()
    assert any(e["device_id"] == "dev-00" for e in open_now)  # killed while the event was open

    events_a = documents(settings_a, settings_a.collection_events)
    same_a, same_b = comparable(events_a), comparable(documents(settings_b, settings_b.collection_events))
    differences = {
        key: {f: (v, same_b.get(key, {}).get(f)) for f, v in doc.items() if same_b.get(key, {}).get(f) != v}
        for key, doc in same_a.items()
    }
    assert same_a.keys() == same_b.keys() and not any(differences.values()), differences
    anomalies = {
        s.mongo_db: {d["_id"]: d["score"] for d in documents(s, s.collection_anomalies)}
        for s in (settings_a, settings_b)
    }
    assert anomalies[settings_a.mongo_db] == anomalies[settings_b.mongo_db]  # per-reading documents too

    fault_start, fault_end = T0 + FAULT.start * STEP, T0 + (FAULT.stop - 1) * STEP
    rule = [e for e in events_a if e["device_id"] == "dev-00" and e["end"] >= fault_start]
    assert len(rule) == 1, rule
    (rule,) = rule
    # the impossible readings, and the model's alarm at the return to normal right after them
    assert rule["start"] == fault_start and fault_end <= rule["end"] <= fault_end + 5 * STEP
    assert rule["rule_alarms"] == 1000 and rule["reason"] in ("rule", "model+rule") and not rule["open"]
    assert rule["severity_class"] == "critical" and rule["top_features"][0]["feature"] == "temperature"

    model = [e for e in events_a if e["device_id"] == "dev-01" and e["end"] >= fault_start]
    assert len(model) == 1, model  # one event, not a scatter of short ones
    (model,) = model
    assert model["reason"] == "model" and model["start"] == fault_start and model["end"] <= fault_end
    assert model["top_features"][0]["feature"] == "temperature" and model["peak_severity"] >= 2.0
    assert model["readings"] >= 200  # (the model learns a bias away: it ends before the fault does)
    for event in (rule, model):  # an event's extent is that of the alarms it groups
        alarms = documents(
            settings_a,
            settings_a.collection_anomalies,
            {"device_id": event["device_id"], "ts": {"$gte": event["start"], "$lte": event["end"]}},
        )
        assert len(alarms) == event["flagged"] == event["rule_alarms"] + event["model_alarms"]
        assert (min(d["ts"] for d in alarms), max(d["ts"] for d in alarms)) == (event["start"], event["end"])

    with api_harness(mongo_db=settings_a.mongo_db) as api:
        served = api.http.get("/api/events", params={"device": "dev-00", "open": "false"}).json()["items"]
        at_fault = [e for e in served if datetime.fromisoformat(e["start"]) == fault_start]
        assert [(e["id"], e["flagged"], e["reason"]) for e in at_fault] == [
            (rule["_id"], rule["flagged"], rule["reason"])
        ]
        page = api.http.get("/api/events", params={"limit": 1000}).json()
        assert {e["id"] for e in page["items"]} == {e["_id"] for e in events_a} and page["next"] is None
