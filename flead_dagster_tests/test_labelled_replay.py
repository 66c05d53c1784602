"""The running system detects like the offline evaluation: a labelled benchmark replayed through the
real broker into a real stream trainer process flags exactly the readings `flead evaluate --online`
(mode local) flags, with the same scores, and its events cover exactly the readings of the offline
alarms grouped into events, so both score the same against the labels (benchmarks/labelled_replay.py
measures it at a larger size)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from flead.bus.replay import replay
from flead.config import Settings
from flead.datasets import pipeline
from flead.evaluation.replayed import (
    disagreements,
    replay_frame,
    trainer_decisions,
    trainer_events,
    within_limits,
)
from flead.evaluation.runner import EvaluationPlan, evaluate, load_lake_benchmark
from flead.federated.simulate import SimulationConfig
from flead.model.config import ModelConfig, TrainConfig
from flead.model.events import EventConfig
from flead_dagster_tests.helpers.trainer import (
    Trainer,
    create_topics,
    isolated_env,
    mongo_db,
    no_leftover_trainers,  # noqa: F401 (autouse: kills the trainers of a failed test)
    offsets_total,
    settings_for,
)

# what `Trainer` runs (SMALL_MODEL; FAST turns federation off: no device ever pushes an update)
SIMULATION = SimulationConfig(model=ModelConfig(window=8, hidden=(16, 4)), train=TrainConfig(warmup=200))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory):
    """The lake's labelled benchmark of 3 synthetic devices x 3 days (`flead data ingest` + `inject`),
    without the readings beyond a physical limit (the trainer's rule alarms)."""
    settings = Settings(home=tmp_path_factory.mktemp("labelled-home"))
    raw = pipeline.acquire(settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(3, 3, 2))
    pipeline.stage(raw, settings)
    pipeline.write_lake_days(settings, pipeline.dataset_days(settings)[:3])
    pipeline.label_lake(settings, seed=0)
    series, _ = load_lake_benchmark(Path(settings.labelled_dir))
    return within_limits(series)[0]


def test_the_trainer_flags_exactly_what_the_online_evaluation_flags(services_env, tmp_path, benchmark):
    series = benchmark
    # nor borrows its partition's fleet calibration: each device on its own, as in mode local
    env = isolated_env(services_env, FLEAD_TRAINER_FLEET_WARMUP=str(10**12))
    settings = settings_for(env)
    grouping = EventConfig(
        settings.events_merge_gap, settings.events_min_duration, settings.events_min_severity
    )
    plan = EvaluationPlan(mode="local", online=True, simulation=SIMULATION, events=None)
    per_reading, grouped = evaluate(series, plan), evaluate(series, replace(plan, events=grouping))
    assert per_reading.evaluation.pooled.point.tp >= 100 and per_reading.evaluation.pooled.point.fp >= 10
    assert grouped.evaluation.pooled.alarms >= 20

    create_topics(settings)
    replay(settings, replay_frame(series))  # all of it first: no partial chunk is flushed early
    n = series.frame.height
    trainer = Trainer(env, tmp_path, "--flush-idle", "0.5")
    trainer.wait_for(
        lambda h: (
            h["counters"].get("scored") == n
            and h["buffered"] == 0
            and offsets_total(h, "checkpointed_offsets") == n
        ),
        90,
        "every reading scored and checkpointed",
    )
    assert trainer.stop() == 0, trainer.tail()  # the final checkpoint stores every anomaly and event
    client, db = mongo_db(settings)
    try:
        anomalies = list(db[settings.collection_anomalies].find())
        events = list(db[settings.collection_events].find())
    finally:
        client.close()

    for offline, decisions, score_gap in (
        (per_reading, trainer_decisions(series, anomalies), 0.0),  # bit-identical scores
        (grouped, trainer_events(series, events), None),  # (events carry no per-reading scores)
    ):
        assert decisions.rule_alarms == 0
        assert disagreements(offline.readings, decisions) == {
            "readings": n,
            "flagged_offline_only": 0,
            "flagged_by_the_trainer_only": 0,
            "flagged_by_both": offline.evaluation.pooled.alarms,
            "max_score_difference": score_gap,
        }
        online, pooled = decisions.evaluate().pooled, offline.evaluation.pooled
        assert (online.point, online.event, online.event_sequence) == (
            pooled.point,
            pooled.event,
            pooled.event_sequence,
        )


def test_documents_that_match_no_reading_are_an_error(benchmark):
    first = benchmark.frame.row(0, named=True)
    ts_us = int(first["ts"].timestamp() * 1e6)
    anomaly = {"device_id": first["device_id"], "ts_us": ts_us + 1, "score": 9.0, "reason": "model"}
    with pytest.raises(ValueError, match="1 anomaly documents match no reading"):
        trainer_decisions(benchmark, [anomaly])
    with pytest.raises(ValueError, match="repeat"):
        trainer_decisions(benchmark, [{**anomaly, "ts_us": ts_us}] * 2)
    event = {"device_id": "elsewhere", "start_us": ts_us, "end_us": ts_us, "reason": "model"}
    with pytest.raises(ValueError, match="1 event documents match no reading"):
        trainer_events(benchmark, [event])
