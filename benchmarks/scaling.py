"""Scale-out rehearsal: 1, 2 and 3 stream trainer processes in one consumer group over a 24-partition
readings topic on the embedded broker: readings/s and how the partitions were split.

    python benchmarks/scaling.py [--devices 240 --days 2] [--partitions 24] [--processes 1 2 3]
                                 [--model default|small]

Starts its own embedded broker and MongoDB on free ports under a temporary home, replays a seeded
synthetic fleet into a fresh topic with `--partitions` partitions, then for each process count starts
that many `python -m services.stream_trainer` processes at once (a fresh group and database each
time) and polls their /health until the checkpoints together cover every offset. Throughput is the
readings divided by the time from the first record any process read to the last checkpoint (group
joins and rebalances included: they are part of scaling out). Prints one JSON object, with the ratio
of each run to the single process run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

from flead.bus.replay import replay
from flead.bus.topics import ensure_topics

sys.path.insert(0, str(Path(__file__).parent))
from stream import MODELS, fleet, local_services, start_trainer  # the stream benchmark's helpers


def run_group(env: dict, topic: str, expected: int, processes: int, model: list[str], home: Path) -> dict:
    group, database = f"scale-{uuid.uuid4().hex[:8]}", f"scale_{uuid.uuid4().hex[:8]}"
    members = []
    for i in range(processes):
        log = home / f"{group}-{i}.log"
        members.append((*start_trainer(env, topic, group, database, model, log), log))
    health: list[dict | None] = [None] * processes
    deadline = time.monotonic() + 3600
    try:
        while time.monotonic() < deadline:
            for i, (process, port, log) in enumerate(members):
                if process.poll() is not None:
                    raise RuntimeError(f"trainer {i} exited {process.returncode}: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError, ValueError):  # not answering yet
                    health[i] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
            checkpointed: dict[str, int] = {}
            for document in filter(None, health):
                for partition in document["partitions"]:
                    checkpointed[str(partition)] = document["checkpointed_offsets"].get(str(partition)) or 0
            if sum(checkpointed.values()) >= expected:
                break
            time.sleep(0.25)  # sampling interval
        else:
            raise TimeoutError("the group did not finish within an hour")
    finally:
        for process, _port, _log in members:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(300) for process, _port, _log in members]
    documents = [d for d in health if d]
    first = min(datetime.fromisoformat(d["first_record_at"]) for d in documents if d["first_record_at"])
    last = max(datetime.fromisoformat(d["last_checkpoint_at"]) for d in documents if d["last_checkpoint_at"])
    seconds = (last - first).total_seconds()
    return {
        "processes": processes,
        "seconds": round(seconds, 3),
        "readings_per_s": round(expected / seconds),
        "members": [
            {
                "partitions": len(d["partitions"]),
                "devices": d["devices"],
                "records_in": d["counters"]["records_in"],
            }
            for d in documents
        ],
        "exit_codes": codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=240)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=24)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    args = parser.parse_args()

    with local_services(FLEAD_TOPIC_READINGS_PARTITIONS=str(args.partitions)) as (home, env, settings):
        frame = fleet(home / "fleet", args.devices, args.days, None)
        topic = f"bench.scaling.{uuid.uuid4().hex[:6]}"
        ensure_topics(settings, {topic: args.partitions})
        summary = replay(settings, frame, topic=topic)
        runs = [run_group(env, topic, frame.height, n, MODELS[args.model], home) for n in args.processes]
    base = runs[0]["readings_per_s"]
    for run in runs:
        run["ratio_vs_first"] = round(run["readings_per_s"] / base, 3)
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count()},
                "devices": frame["device_id"].n_unique(),
                "readings": frame.height,
                "partitions": args.partitions,
                "model": args.model,
                "replay_msgs_per_s": round(summary.rate),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
