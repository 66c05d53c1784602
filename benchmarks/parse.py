"""Intel Lab parse and parse+lake-write throughput, against a plain `pl.read_csv` of the same files.

    python benchmarks/parse.py [SOURCE] [--repeat N]

SOURCE defaults to the shared 9-mote folder (../shared/data/intel_lab). Prints one JSON object; each
timing is the best of N runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from flead.datasets.intel_lab import FIELDS, parse_files, resolve_source
from flead.datasets.lake import ingest

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared/data/intel_lab"


def best_of(repeat: int, run: Callable[[], object]) -> float:
    run()
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    sources = resolve_source(args.source)
    lines = parse_files(sources).lines

    def baseline() -> None:
        for path in sources:
            pl.read_csv(path, separator=" ", has_header=False, new_columns=list(FIELDS))

    lake_root = Path(tempfile.mkdtemp(prefix="flead-bench-lake-"))
    try:
        seconds = {
            "baseline_read_csv": best_of(args.repeat, baseline),
            "parse": best_of(args.repeat, lambda: parse_files(sources)),
            "parse_write": best_of(args.repeat, lambda: ingest(sources, lake_root)),
        }
    finally:
        shutil.rmtree(lake_root)

    result: dict[str, object] = {
        "source": str(args.source),
        "files": len(sources),
        "lines": lines,
        "repeat": args.repeat,
        "polars": pl.__version__,
        "python": platform.python_version(),
    }
    for name, secs in seconds.items():
        result[name] = {"seconds": round(secs, 4), "lines_per_s": round(lines / secs)}
    result["ratio_parse_vs_baseline"] = round(seconds["parse"] / seconds["baseline_read_csv"], 2)
    result["ratio_parse_write_vs_baseline"] = round(seconds["parse_write"] / seconds["baseline_read_csv"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
