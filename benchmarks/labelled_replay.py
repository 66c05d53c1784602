"""The running system against the offline evaluation: a labelled benchmark replayed through Kafka and
the real stream trainer, its anomaly documents in MongoDB scored against the labels, beside
`flead evaluate --online` (mode local) on the same readings.

    python benchmarks/labelled_replay.py [--source synthetic|intel] [--devices 6 --days 5]
                                         [--model default|small] [--warmup 1000] [--partitions 4]
                                         [--seed 0] [--push-every N] [--fleet-warmup N]

Starts its own embedded broker and MongoDB on free ports under a temporary home (`stream.py`'s
`local_services`). The data: the lake's labelled benchmark built as `flead data ingest` + `flead data
inject` build it (`detection.py`'s `build`, seeded), of a synthetic fleet (--devices x --days) or of
the 9 shared real motes (../shared/data/intel_lab, their first --days days), without the readings the
lake flags out_of_range (as `flead evaluate` leaves them out) and those an injected anomaly pushed
beyond a physical limit (the trainer's rule alarms; `flead.evaluation.replayed.within_limits`).

Offline: `flead.evaluation.runner.evaluate` with `EvaluationPlan(mode="local", online=True)`, its
alarms per reading (events off) and grouped into events (the settings' `events_*`, as `flead
evaluate` reports them). Online: the same readings replayed (`flead.bus.replay`, event-time order)
into a fresh topic, then `python -m services.stream_trainer` (= `flead trainer run`) with the same
model and train config and neither federation nor borrowing (no device pushes an update, so none
adopts a global version, and none feeds or borrows a fleet calibration: each device on its own, as in
mode local; --push-every and --fleet-warmup turn them on), waited for until its group has committed
every offset and it has scored every reading, then stopped (its final checkpoint stores every anomaly
and event). Its anomaly documents (`reason: model`) are scored against the offline per-reading
alarms, the readings inside its events (`collection_events`) against the offline events, with the
same metrics (`flead.evaluation.replayed`). Prints one JSON object: for each of the two, both F1s
(point and event), their differences, the readings the two flag differently, alarms; and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import polars as pl

from flead.bus import lag
from flead.bus.replay import replay
from flead.bus.topics import ensure_topics
from flead.config import Settings
from flead.datasets import lake, pipeline
from flead.evaluation.replayed import (
    TrainerDecisions,
    disagreements,
    replay_frame,
    trainer_decisions,
    trainer_events,
    within_limits,
)
from flead.evaluation.runner import EvaluationPlan, evaluate
from flead.federated.simulate import SimulationConfig
from flead.model.config import ModelConfig, TrainConfig
from flead.model.events import EventConfig
from flead.storage.mongo import get_database, make_mongo_client

sys.path.insert(0, str(Path(__file__).parent))
from detection import SHARED, build  # the detection benchmark's lake build
from stream import free_port, local_services  # the stream benchmark's services

MODELS = {"default": ModelConfig(), "small": ModelConfig(window=8, hidden=(16, 4))}
# samples between pushes, readings before a device's scores feed its partition's fleet calibration:
# never, so no global version is adopted and no calibration borrowed (each device on its own: mode local)
NEVER = 10**12
TOLERANCE = 0.02


def trainer_args(model: ModelConfig, train: TrainConfig) -> list[str]:
    """`flead trainer run` options that give the trainer exactly `model` and `train` (its command line
    sets the window, hidden sizes, warm-up and chunk; everything else is the default)."""
    cli_model = ModelConfig(window=model.window, hidden=model.hidden)
    cli_train = TrainConfig(warmup=train.warmup, batch_size=train.batch_size)
    if (cli_model, cli_train) != (model, train):
        raise ValueError("the trainer's command line sets window, hidden, warmup and chunk only")
    return [
        *("--window", str(model.window), "--hidden", ",".join(map(str, model.hidden))),
        *("--warmup", str(train.warmup), "--chunk", str(train.batch_size)),
    ]


def labelled_series(home: Path, source: str, devices: int, days: int, seed: int):
    """The labelled benchmark and how many out-of-range readings of it were left out."""
    if source == "synthetic":
        spec = pipeline.SyntheticSpec(devices, days, seed)
        return build(home / "synthetic", pipeline.SourceKind.SYNTHETIC, spec, seed)
    if not SHARED.is_dir():
        raise SystemExit(f"--source intel needs the shared motes in {SHARED}")
    series, _ = build(home / "intel", pipeline.SourceKind.PATH, pipeline.SyntheticSpec(), seed)
    end = series.frame["ts"].min() + timedelta(days=days)
    labelled = Path(Settings(home=home / "intel").labelled_dir)
    files = [lake.partition_path(labelled, day) for day in lake.list_partitions(labelled)]
    rows = pl.scan_parquet(files).filter(pl.col("out_of_range") & (pl.col("ts") < end))
    dropped = rows.select(pl.len()).collect().item()
    return replace(series, frame=series.frame.filter(pl.col("ts") < end)), dropped


def offline(series, simulation: SimulationConfig, events: EventConfig | None):
    """`flead evaluate --online -m local`: (its pooled report, seconds, its per-reading decisions)."""
    plan = EvaluationPlan(mode="local", online=True, simulation=simulation, events=events)
    outcome = evaluate(series, plan)
    return outcome.evaluation.pooled, outcome.seconds, outcome.readings


def compare(offline_run, trainer: TrainerDecisions, unjudged: int | None) -> dict:
    """The trainer's decisions beside an offline run's: both summaries, the F1 differences, whether
    they are within the tolerance, and the readings the two flag differently."""
    pooled, seconds, readings = offline_run
    ours, theirs = summary(pooled) | {"seconds": round(seconds, 3)}, summary(trainer.evaluate().pooled)
    theirs |= {"unjudged": unjudged, "rule_alarms": trainer.rule_alarms}  # (unjudged: its /health)
    difference = {
        key: None if theirs[key] is None or ours[key] is None else round(theirs[key] - ours[key], 6)
        for key in ("point_f1", "event_f1")
    }
    return {
        "offline": ours,
        "trainer": theirs,
        "trainer_minus_offline": difference,
        "within_tolerance": all(v is not None and abs(v) <= TOLERANCE for v in difference.values()),
        "decisions": disagreements(readings, trainer),
    }


def summary(pooled) -> dict:
    return {
        "point_f1": pooled.point.f1,
        "event_f1": pooled.event.f1,
        "point_precision": pooled.point.precision,
        "point_recall": pooled.point.recall,
        "alarms": pooled.alarms,
        "unjudged": sum(pooled.unjudged.values()),
    }


def run_trainer(
    env: dict,
    settings: Settings,
    args: list[str],
    targets: dict[int, int],
    expected: int,
    log: Path,
    push_every: int = NEVER,
    fleet_warmup: int = NEVER,
) -> dict:
    """The trainer on `settings`' topic, group and database until every reading is scored and
    checkpointed; then SIGTERM (a final checkpoint) and its /health counters."""
    port = free_port()
    trainer_env = {
        **os.environ,
        **env,
        "FLEAD_TRAINER_PUSH_EVERY": str(push_every),
        "FLEAD_TRAINER_FLEET_WARMUP": str(fleet_warmup),
        "FLEAD_TOPIC_READINGS": settings.topic_readings,
        "FLEAD_CONSUMER_GROUP": settings.consumer_group,
        "FLEAD_MONGO_DB": settings.mongo_db,
        "FLEAD_TRAINER_HEALTH_PORT": str(port),
    }
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.stream_trainer", *args, "--flush-idle", "0.5"],
            env=trainer_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        waited = lag.wait_for_group(
            settings, settings.consumer_group, settings.topic_readings, targets, timeout_s=3600, stall_s=120
        )
        if not waited.caught_up:
            raise RuntimeError(f"trainer {waited.outcome}, {waited.remaining} readings left: {_tail(log)}")
        health = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the last partial chunks: scored once caught up (0.5 s)
            if process.poll() is not None:
                raise RuntimeError(f"trainer exited {process.returncode}: {_tail(log)}")
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                health = None
            if health and health["counters"].get("scored", 0) >= expected and health["buffered"] == 0:
                break
            time.sleep(0.25)  # polling interval
        else:
            raise TimeoutError(f"the trainer did not score every reading: {health}")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(300)
    if code != 0:
        raise RuntimeError(f"the trainer exited {code} (no final checkpoint?): {_tail(log)}")
    counters = health["counters"]
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "records_in": counters.get("records_in", 0),
        "scored": counters.get("scored", 0),
        "unjudged": counters.get("unjudged"),  # scored without a calibration (own or the fleet's)
        "dead_letters": counters.get("dlq", 0),
        "late": counters.get("late", 0),
        "anomaly_documents": counters.get("anomalies", 0),
        "event_writes": counters.get("event_writes", 0),
        "updates_pushed": counters.get("updates_pushed", 0),
        "global_versions": health["exchange"].get("global_version"),
    }


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def stored(settings: Settings, collection: str, fields: tuple[str, ...]) -> list[dict]:
    client = make_mongo_client(settings)
    try:
        return list(get_database(client, settings)[collection].find({}, dict.fromkeys(fields, 1)))
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("synthetic", "intel"), default="synthetic")
    parser.add_argument("--devices", type=int, default=6, help="synthetic fleet")
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    parser.add_argument("--warmup", type=int, default=TrainConfig().warmup)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--push-every",
        type=int,
        default=NEVER,
        help="federate the trainer (in-process exchange): samples between a device's updates",
    )
    parser.add_argument(
        "--fleet-warmup",
        type=int,
        default=NEVER,
        help="let the trainer's devices borrow their partition's fleet calibration after N readings",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    model, train = MODELS[args.model], TrainConfig(warmup=args.warmup)
    simulation = SimulationConfig(model=model, train=train)
    if simulation.batch_size % train.batch_size:  # else the two would cut a device's chunks apart
        raise SystemExit("the simulation's turn must be whole chunks of the trainer's")
    command = trainer_args(model, train)

    with local_services() as (home, env, settings):
        benchmark, dropped = labelled_series(home, args.source, args.devices, args.days, args.seed)
        grouping = EventConfig(
            settings.events_merge_gap, settings.events_min_duration, settings.events_min_severity
        )
        whole = offline(benchmark, simulation, grouping)[0]  # what `flead evaluate --online` prints
        series, beyond_limits = within_limits(benchmark)
        frame = series.frame
        per_reading, grouped = offline(series, simulation, None), offline(series, simulation, grouping)

        tag = uuid.uuid4().hex[:8]
        run = settings.model_copy(
            update={
                "topic_readings": f"bench.labelled.{tag}",
                "consumer_group": f"bench-{tag}",
                "mongo_db": f"bench_{tag}",
            }
        )
        ensure_topics(run, {run.topic_readings: args.partitions})
        replayed = replay(run, replay_frame(series))
        targets = lag.end_offsets(run, run.topic_readings)  # (may fall short: see next_offsets)
        targets |= {p: max(o, targets.get(p, 0)) for p, o in replayed.next_offsets.items()}
        log = home / f"trainer-{tag}.log"
        trainer = run_trainer(
            env, run, command, targets, frame.height, log, args.push_every, args.fleet_warmup
        )
        anomalies = stored(run, run.collection_anomalies, ("device_id", "ts_us", "score", "reason"))
        events = stored(run, run.collection_events, ("device_id", "start_us", "end_us", "reason"))

    unjudged = trainer["unjudged"]
    by_reading = compare(per_reading, trainer_decisions(series, anomalies), unjudged)
    by_event = compare(grouped, trainer_events(series, events), unjudged)
    report = {
        "command": "python benchmarks/labelled_replay.py "
        + f"--source {args.source} --devices {args.devices} --days {args.days} --model {args.model} "
        + f"--warmup {args.warmup} --partitions {args.partitions} --seed {args.seed}"
        + ("" if args.push_every == NEVER else f" --push-every {args.push_every}")
        + ("" if args.fleet_warmup == NEVER else f" --fleet-warmup {args.fleet_warmup}"),
        "data": {
            "source": args.source,
            "devices": frame["device_id"].n_unique(),
            "readings": frame.height,
            "labelled": int(frame["label"].sum()),
            "out_of_range_left_out": dropped,  # flagged by the lake (as `flead evaluate` leaves them out)
            "beyond_limits_left_out": beyond_limits,  # left after injection (`replayed.within_limits`)
        },
        "config": {"model": model.to_dict(), "train": train.to_dict(), "trainer_args": command},
        "offline_whole_benchmark": {k: getattr(whole, k).f1 for k in ("point", "event")},
        "per_reading": by_reading,
        "events": by_event,
        "trainer_run": {"replay_seconds": round(replayed.seconds, 3), **trainer},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
