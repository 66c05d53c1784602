"""The running system detects like the offline evaluation: a labelled benchmark replayed through the
real broker into a real stream trainer process flags exactly the readings `flead evaluate --online`
(mode local) flags, with the same scores, so both score the same against the labels
(benchmarks/labelled_replay.py measures it at a larger size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flead.bus.replay import replay
from flead.config import Settings
from flead.datasets import pipeline
from flead.evaluation.replayed import disagreements, replay_frame, trainer_decisions, within_limits
from flead.evaluation.runner import EvaluationPlan, evaluate, load_lake_benchmark
from flead.federated.simulate import SimulationConfig
from flead.model.config import ModelConfig, TrainConfig
from flead_dagster_tests.test_trainer_stream import (
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
    plan = EvaluationPlan(mode="local", online=True, simulation=SIMULATION, events=None)
    offline = evaluate(series, plan)
    assert offline.evaluation.pooled.point.tp >= 100 and offline.evaluation.pooled.point.fp >= 10

    # nor borrows its partition's fleet calibration: each device on its own, as in mode local
    env = isolated_env(services_env, FLEAD_TRAINER_FLEET_WARMUP=str(10**12))
    settings = settings_for(env)
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
    assert trainer.stop() == 0, trainer.tail()  # the final checkpoint stores every anomaly
    client, db = mongo_db(settings)
    try:
        documents = list(db[settings.collection_anomalies].find())
    finally:
        client.close()

    decisions = trainer_decisions(series, documents)
    assert decisions.rule_alarms == 0
    assert disagreements(offline.readings, decisions) == {
        "readings": n,
        "flagged_offline_only": 0,
        "flagged_by_the_trainer_only": 0,
        "flagged_by_both": offline.evaluation.pooled.alarms,
        "max_score_difference": 0.0,  # bit-identical scores
    }
    online, pooled = decisions.evaluate().pooled, offline.evaluation.pooled
    assert (online.point, online.event, online.event_sequence) == (
        pooled.point,
        pooled.event,
        pooled.event_sequence,
    )
