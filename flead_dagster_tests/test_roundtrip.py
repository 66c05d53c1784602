"""The platform round trip: core function, Dagster asset, `flead local check`; `flead demo` without Java."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import materialize

from flead.roundtrip import run_round_trip
from flead.storage.mongo import get_database, make_mongo_client
from flead_dagster.definitions import defs
from flead_dagster.defs.assets.platform import platform_round_trip
from flead_dagster.defs.resources import FleadResource

FLEAD = str(Path(sys.executable).parent / "flead")


def test_round_trip_goes_through_kafka_and_mongodb(settings):
    report = run_round_trip(settings)
    assert report.committed_offset == report.offset + 1
    client = make_mongo_client(settings)
    try:
        stored = get_database(client, settings)[settings.collection_smoke].find_one(
            {"_id": report.document_id}
        )
    finally:
        client.close()
    assert stored["device_id"] == report.reading.device_id
    assert stored["kafka_offset"] == report.offset


def test_definitions_load_with_resources():
    assert defs.resolve_asset_graph().get_all_asset_keys()
    assert set(defs.resources) == {"flead", "pyspark"}
    assert defs.resources["flead"].overrides == {}  # the code location reads the environment at each use


def test_round_trip_asset_materializes(settings):
    result = materialize([platform_round_trip], resources={"flead": FleadResource.of(settings)})
    assert result.success
    metadata = result.asset_materializations_for_node("platform_round_trip")[0].metadata
    assert metadata["committed_offset"].value == metadata["offset"].value + 1


def test_local_check_command_runs_the_round_trip(services_env):
    result = subprocess.run(
        [FLEAD, "local", "check"],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "written to" in result.stdout and "read back" in result.stdout


def test_demo_without_java_says_how_to_install_it(services_env):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([FLEAD, "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Java was not found" in result.stdout and "openjdk-17" in result.stdout
