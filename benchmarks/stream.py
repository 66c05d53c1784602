"""End-to-end stream trainer throughput (replay -> Kafka -> trainer -> MongoDB) against a bare
kafka-python consumer loop reading the same topic in the same run, and the trainer's memory.

    python benchmarks/stream.py [--devices 54 --days 7] [--large-devices 5000 --large-hours 4]
                                [--huge-motes 5000 --huge-split 10 --huge-hours 6]
                                [--models default,small] [--fleets small,large,huge]
                                [--large-processes 2] [--large-checkpoint-records N] [--profile DIR]

Starts its own embedded broker and MongoDB on free ports under a temporary home. For each fleet
(synthetic, `flead.datasets.synthetic.generate_fleet` parsed by `intel_lab.parse_files`): replay it
into a fresh 8-partition topic (timed), read it with a bare consumer loop (a fresh group, the same
client settings and max_poll_records; timed from the first record to the last), then run
`python -m services.stream_trainer` per model on it (a fresh group and database; timed from its
first record to the checkpoint that covers every offset, i.e. every reading trained, scored or
waiting for a whole chunk, stored in MongoDB), sampling its RSS. `--large-processes 2` runs the large
fleet's trainers as two processes of one group (the partitions split between them; the peak RSS is the
larger one's). With one process, a new trainer then starts in the stopped group (`restart`): the
seconds until it owns every partition with every device restored from the checkpoints, and its RSS.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import psutil

from flead.bus.clients import make_consumer
from flead.bus.replay import replay
from flead.bus.topics import ensure_topics
from flead.config import Settings
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.local.services import LocalServices, free_port

MODELS = {
    "default": [],  # ModelConfig(): window 16, hidden (64, 8), 9,544 parameters
    "small": ["--window", "8", "--hidden", "16,4"],  # 1,252 parameters
}


@contextlib.contextmanager
def local_services(**extra_env: str) -> Iterator[tuple[Path, dict, Settings]]:
    """An embedded broker and MongoDB on free ports under a temporary home: (home, FLEAD_* env,
    settings); stopped on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {
            "FLEAD_HOME": str(home),
            "FLEAD_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "FLEAD_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
            **extra_env,
        }
        settings = Settings(**{k.removeprefix("FLEAD_").lower(): v for k, v in env.items()})
        services = LocalServices(settings)
        services.up()
        try:
            yield home, env, settings
        finally:
            services.down()


def fleet(out: Path, devices: int, days: int, hours: float | None, split: int = 1) -> pl.DataFrame:
    """`devices` synthetic motes; with `split` > 1 each mote's readings are dealt in turn to `split`
    devices (``<mote>.<k>``), so `devices * split` devices stream at once, each a reading every
    `split` of its mote's (the generator makes whole days, too many for 50,000 motes)."""
    generated = generate_fleet(out, n_devices=devices, days=days, seed=1)
    rows = parse_files(generated.paths, mote_ids=range(1, devices + 1)).rows
    if hours is not None:
        rows = rows.filter(pl.col("ts") < rows["ts"].min() + timedelta(hours=hours))
    if split > 1:
        rows = rows.sort("device_id", "ts").with_columns(
            pl.concat_str(
                "device_id", pl.lit("."), (pl.int_range(pl.len()).over("device_id") % split).cast(pl.String)
            ).alias("device_id")
        )
    return rows.sort("ts", "device_id", "epoch")


def bare_consume(settings: Settings, topic: str, expected: int) -> float:
    """Seconds from the first record to the last for a plain poll loop (group join excluded)."""
    consumer = make_consumer(
        settings,
        topic,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        max_poll_records=settings.trainer_max_poll_records,
    )
    seen, first = 0, None
    try:
        while seen < expected:
            for records in consumer.poll(timeout_ms=500).values():
                if first is None:
                    first = time.perf_counter()
                seen += len(records)
        return time.perf_counter() - first
    finally:
        consumer.close()


def start_trainer(
    env: dict, topic: str, group: str, database: str, model: list[str], log: Path, profile: Path | None
) -> tuple[subprocess.Popen, int]:
    """A trainer process on `topic` in `group` (idle flushes off), logging to `log`; (process, port).
    With `profile`, under `py-spy record`, its collapsed stacks written there."""
    port = free_port()
    trainer_env = {
        **os.environ,
        **env,
        "FLEAD_TOPIC_READINGS": topic,
        "FLEAD_CONSUMER_GROUP": group,
        "FLEAD_MONGO_DB": database,
        "FLEAD_TRAINER_HEALTH_PORT": str(port),
    }
    command = [sys.executable, "-m", "services.stream_trainer", *model, "--flush-idle", "3600"]
    if profile is not None:
        command = ["py-spy", "record", "--format", "raw", "--rate", "50", "-o", str(profile), "--", *command]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=trainer_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, port


def trainer_rss(pid: int) -> int:
    """The trainer's RSS: the largest process of the tree (under py-spy, the trainer is its child)."""
    root = psutil.Process(pid)
    return max(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def run_trainer(
    settings: Settings,
    env: dict,
    topic: str,
    expected: int,
    model: list[str],
    home: Path,
    profile: Path | None,
    processes: int = 1,
) -> dict:
    """`processes` trainers in one fresh group (and database) until their checkpoints cover every
    offset; timed from the first record any of them read to the last checkpoint."""
    group, database = f"bench-{uuid.uuid4().hex[:8]}", f"bench_{uuid.uuid4().hex[:8]}"
    started = []
    for k in range(processes):
        log = home / f"trainer-{group}-{k}.log"
        stacks = None if profile is None else profile.with_name(f"{profile.stem}-{k}{profile.suffix}")
        started.append((*start_trainer(env, topic, group, database, model, log, stacks), log))
    peak_rss, healths = [0] * processes, [None] * processes
    deadline = time.monotonic() + 3600
    try:
        while time.monotonic() < deadline:
            for k, (process, port, log) in enumerate(started):
                if process.poll() is not None:
                    raise RuntimeError(f"trainer exited {process.returncode}: {log.read_text()[-2000:]}")
                try:
                    peak_rss[k] = max(peak_rss[k], trainer_rss(process.pid))
                    healths[k] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                except (httpx.HTTPError, ValueError, psutil.Error):
                    healths[k] = None
            if all(healths) and sum(checkpointed(h) for h in healths) >= expected:
                break
            time.sleep(0.25)  # sampling interval
        else:
            raise TimeoutError("the trainers did not finish within an hour")
    finally:
        codes = [stop_trainer(process, profile is not None) for process, _, _ in started]
    first = min(datetime.fromisoformat(h["first_record_at"]) for h in healths if h["first_record_at"])
    last = max(datetime.fromisoformat(h["last_checkpoint_at"]) for h in healths if h["last_checkpoint_at"])
    seconds = (last - first).total_seconds()
    scored = sum(h["counters"]["scored"] for h in healths)
    result = {
        "seconds": round(seconds, 3),
        "readings_per_s": round(expected / seconds),
        "scored": scored,
        "waiting_for_a_whole_chunk": expected - scored,
        **{
            key: sum(h["counters"].get(key) or 0 for h in healths)
            for key in ("judged", "unjudged", "anomalies", "checkpoints")
        },
        "devices": sum(h["devices"] for h in healths),
        "peak_rss_mb": round(max(peak_rss) / 2**20, 1),
        "exit_code": max(codes),
    }
    if processes == 1:
        health = healths[0]
        result |= {
            "threshold_sources": health.get("thresholds"),
            "training_cohort": health.get("training_cohort"),
            "checkpoint_writes": health.get("checkpoint_writes"),
            "restart": restart(env, topic, group, database, model, home, result["devices"]),
        }
    else:
        result["processes"] = [
            {
                "partitions": h["partitions"],
                "devices": h["devices"],
                "records_in": h["counters"]["records_in"],
                "peak_rss_mb": round(rss / 2**20, 1),
                "checkpoint_writes": h.get("checkpoint_writes"),
            }
            for h, rss in zip(healths, peak_rss, strict=True)
        ]
    return result


def restart(
    env: dict, topic: str, group: str, database: str, model: list[str], home: Path, devices: int
) -> dict:
    """A new trainer in the (stopped) group: seconds from its start until it owns every partition with
    all `devices` restored from the checkpoints, and its RSS then."""
    log = home / f"trainer-{group}-restart.log"
    started = time.monotonic()
    process, port = start_trainer(env, topic, group, database, model, log, None)
    try:
        while time.monotonic() - started < 1800:
            if process.poll() is not None:
                raise RuntimeError(f"trainer exited {process.returncode}: {log.read_text()[-2000:]}")
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                health = None
            if health and health["devices"] == devices and health["lag_total"] is not None:
                return {
                    "seconds_to_restored": round(time.monotonic() - started, 1),
                    "devices": health["devices"],
                    "rss_mb": round(trainer_rss(process.pid) / 2**20, 1),
                }
            time.sleep(0.25)  # sampling interval
        raise TimeoutError("the restarted trainer did not restore its devices within 30 minutes")
    finally:
        stop_trainer(process, profiled=False)


def checkpointed(health: dict) -> int:
    return sum(v or 0 for v in health["checkpointed_offsets"].values())


def stop_trainer(process: subprocess.Popen, profiled: bool) -> int:
    """SIGTERM (under py-spy, to the trainer: py-spy writes its stacks when its child exits)."""
    children = psutil.Process(process.pid).children()
    os.kill(children[0].pid if profiled and children else process.pid, signal.SIGTERM)
    return process.wait(300)


def bench_fleet(
    settings,
    env,
    home,
    devices,
    days,
    hours,
    models,
    checkpoint: tuple[int, float],
    profile: Path | None,
    split: int = 1,
    processes: int = 1,
) -> dict:
    frame = fleet(home / f"fleet-{devices}", devices, days, hours, split)
    devices = frame["device_id"].n_unique()
    topic = f"bench.stream.{devices}.{uuid.uuid4().hex[:6]}"
    ensure_topics(settings, {topic: settings.topic_readings_partitions})
    summary = replay(settings, frame, topic=topic)
    bare_s = bare_consume(settings, topic, frame.height)
    records, seconds = checkpoint
    env = {
        **env,
        "FLEAD_TRAINER_CHECKPOINT_RECORDS": str(records),
        "FLEAD_TRAINER_CHECKPOINT_SECONDS": str(seconds),
    }
    result = {
        "devices": frame["device_id"].n_unique(),
        "readings": frame.height,
        "span": f"{days} days" if hours is None else f"{hours:g} hours",
        "checkpoint_every": {"records": records, "seconds": seconds},
        "replay_msgs_per_s": round(summary.rate),
        "bare_consumer": {"seconds": round(bare_s, 3), "msgs_per_s": round(frame.height / bare_s)},
        "trainer_processes": processes,
        "trainer": {},
    }
    for name in models:
        stacks = None if profile is None else profile / f"trainer-{devices}-{name}.txt"
        trainer = run_trainer(settings, env, topic, frame.height, MODELS[name], home, stacks, processes)
        trainer["ratio_vs_bare"] = round(trainer["readings_per_s"] / result["bare_consumer"]["msgs_per_s"], 3)
        result["trainer"][name] = trainer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=54)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--large-devices", type=int, default=5000)
    parser.add_argument("--large-hours", type=float, default=4.0)
    parser.add_argument(
        "--large-processes",
        type=int,
        default=1,
        help="trainer processes in the large fleet's group (2: the two-process rehearsal)",
    )
    parser.add_argument("--models", default="default,small")
    parser.add_argument(
        "--fleets",
        default="small,large,huge",
        help="small (--devices), large (--large-devices), huge (--huge-motes x --huge-split devices)",
    )
    parser.add_argument("--huge-motes", type=int, default=5000)
    parser.add_argument("--huge-split", type=int, default=10, help="devices per mote in the huge fleet")
    parser.add_argument("--huge-hours", type=float, default=6.0)
    parser.add_argument(
        "--large-checkpoint-records",
        type=int,
        default=None,
        help="readings between the large fleet's checkpoints (default 100 per device, or every 60 s)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run each trainer under py-spy (pip install py-spy) and write its collapsed stacks here",
    )
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    fleets = args.fleets.split(",")

    with local_services() as (home, env, settings):
        results = {"machine": {"cpus": os.cpu_count()}, "fleets": []}
        if "small" in fleets:
            checkpoint = (settings.trainer_checkpoint_records, settings.trainer_checkpoint_seconds)
            small = (args.devices, args.days, None)
            results["fleets"].append(
                bench_fleet(settings, env, home, *small, models, checkpoint, args.profile)
            )
        if "large" in fleets:
            # a checkpoint writes every device changed since the last one: its cost grows with the
            # fleet, so the interval does too (about 100 readings per device, or a minute)
            checkpoint = (100 * args.large_devices, 60.0)
            if args.large_checkpoint_records is not None:  # above the fleet's readings: the final one only
                checkpoint = (args.large_checkpoint_records, 3600.0)
            large = (args.large_devices, 1, args.large_hours)
            results["fleets"].append(
                bench_fleet(
                    settings, env, home, *large, models, checkpoint, args.profile, 1, args.large_processes
                )
            )
        if "huge" in fleets:
            # every device changes between two checkpoints: each writes the whole fleet
            checkpoint = (100 * args.huge_motes, 60.0)
            huge = (args.huge_motes, 1, args.huge_hours)
            results["fleets"].append(
                bench_fleet(settings, env, home, *huge, models, checkpoint, args.profile, args.huge_split)
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
