"""`flead replay` throughput against a bare kafka-python producer loop sending the same bytes.

    python benchmarks/replay.py [--source PATH] [--devices N --days D] [--repeat N]

Starts its own embedded broker (and MongoDB) on free ports under a temporary home, builds a lake from
the shared 9-mote folder when present (else a synthetic fleet), then times, in the same process and
alternating: (a) `flead.bus.replay.replay` from the lake frame (JSON encoding included) and (b) a bare
loop of `producer.send(topic, key, value)` over the pre-encoded bytes, each into a fresh topic with the
same partition count and the same producer settings. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from flead.bus.clients import make_producer
from flead.bus.codec import encode_readings
from flead.bus.replay import lake_readings, replay
from flead.bus.topics import ensure_topics
from flead.config import Settings
from flead.datasets import pipeline
from flead.local.services import LocalServices, free_port

SHARED = Path(__file__).resolve().parents[2] / "shared/data/intel_lab"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SHARED if SHARED.is_dir() else None)
    parser.add_argument("--devices", type=int, default=54)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        )
        if args.source:
            raw = pipeline.acquire(settings, pipeline.SourceKind.PATH, args.source)
        else:
            raw = pipeline.acquire(
                settings,
                pipeline.SourceKind.SYNTHETIC,
                synthetic=pipeline.SyntheticSpec(args.devices, args.days),
            )
        staged = pipeline.stage(raw, settings)
        pipeline.write_lake_days(
            settings, [d for d in pipeline.dataset_days(settings) if d.isoformat() in staged.days]
        )
        frame = lake_readings(settings)
        keys, values = encode_readings(frame)

        services = LocalServices(settings)
        services.up()
        try:
            flead_runs, bare_runs = [], []
            for _ in range(args.repeat):
                topic = f"bench.flead.{uuid.uuid4().hex[:8]}"
                ensure_topics(settings, {topic: settings.topic_readings_partitions})
                flead_runs.append(replay(settings, frame, topic=topic).seconds)

                topic = f"bench.bare.{uuid.uuid4().hex[:8]}"
                ensure_topics(settings, {topic: settings.topic_readings_partitions})
                producer = make_producer(settings)
                started = time.perf_counter()
                for key, value in zip(keys, values, strict=True):
                    producer.send(topic, key=key, value=value)
                producer.flush()
                bare_runs.append(time.perf_counter() - started)
                producer.close()
        finally:
            services.down()

    flead_best, bare_best = min(flead_runs), min(bare_runs)
    print(
        json.dumps(
            {
                "source": str(args.source)
                if args.source
                else f"synthetic {args.devices} devices x {args.days} days",
                "messages": len(keys),
                "repeat": args.repeat,
                "flead_replay": {
                    "seconds": round(flead_best, 3),
                    "msgs_per_s": round(len(keys) / flead_best),
                },
                "bare_producer_loop": {
                    "seconds": round(bare_best, 3),
                    "msgs_per_s": round(len(keys) / bare_best),
                },
                "ratio_flead_vs_bare": round(bare_best / flead_best, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
