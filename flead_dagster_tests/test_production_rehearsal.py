"""The production configuration rehearsed on the real engines this machine runs.

* Debian's PostgreSQL (a throwaway cluster on a free port) as Dagster's run, event-log and schedule
  storage, through ``docker/dagster.yaml`` itself: ``dagster-daemon run`` and ``dagster-webserver``
  load the project's workspace, runs are launched over GraphQL, queued, started by the daemon and
  must end SUCCESS in the Postgres tables.
* A Spark standalone master and worker (``spark-class`` from the installed pyspark): the evaluation
  job runs on ``spark://127.0.0.1:PORT`` and must write the rows the in-process scoring computes.

`make test` installs PostgreSQL (apt); Java 17 runs Spark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import psutil
import psycopg2
import pyspark
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient
from polars.testing import assert_frame_equal

from flead.api_client import GlobalApiClient
from flead.config import Settings
from flead.evaluation.batch_scoring import score_lake
from flead.local.services import free_port, tail_text
from flead.storage.mongo import get_database, make_mongo_client
from flead_dagster.defs.schedules import range_tags
from flead_dagster_tests import test_spark_scoring
from flead_dagster_tests.helpers.reports import DAYS
from flead_dagster_tests.helpers.trainer import wait_until
from services.global_api.live_server import LiveServer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTED_WITHIN_S = 120.0  # generous: a shared two-core machine
RUN_WITHIN_S = 180.0
STOP_GRACE_S = 15.0
dirs = test_spark_scoring.dirs  # the lake and its labelled copy (a module fixture)
LOCATION = "flead_dagster.definitions:defs"  # the name of the workspace's python_module entry
LOCATIONS_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }
"""


# ------------------------------------------------------------------------------ processes


@dataclass
class Started:
    """A process a fixture started, its output in a file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.name} ({self.log}):\n{tail_text(self.log, lines, max_bytes=64 * 1024)}"

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.popen.returncode}\n{self.tail()}")


def stop_together(processes: list[Started]) -> None:
    """SIGTERM to each process and its children at once (by PID), the grace, SIGKILL to the rest."""
    members: list[psutil.Process] = []
    for started in processes:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(started.popen.pid)
            members += [process, *process.children(recursive=True)]
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    _gone, alive = psutil.wait_procs(members, timeout=STOP_GRACE_S)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(alive, timeout=10)
    for started in processes:
        started.popen.wait(10)


def start(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> Started:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
    return Started(name, popen, log)


# ------------------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    def connect(self):
        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.database
        )


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL's server programs are not installed: apt-get install -y postgresql")
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway cluster with password authentication on a free port, stopped at the end.

    initdb refuses to run as root, so as root its programs run as the `postgres` user, in a folder
    that user can reach (pytest's own tmp folders are private to root)."""
    pg = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="flead-postgres-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    server = Postgres("127.0.0.1", free_port(), "dagster", "rehearsal-secret", "dagster")
    password_file = root / "password"
    password_file.write_text(server.password)
    if as_owner:
        shutil.chown(password_file, "postgres")
    data = root / "data"

    def run(*command: str | Path) -> None:
        done = subprocess.run([*as_owner, *map(str, command)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"

    run(pg / "initdb", "-D", data, "-U", server.user, f"--pwfile={password_file}", "--auth=scram-sha-256")
    options = f"-p {server.port} -c listen_addresses={server.host} -k {root} -c fsync=off"
    run(pg / "pg_ctl", "-D", data, "-l", root / "postgres.log", "-o", options, "-w", "-t", "60", "start")
    try:
        createdb = [pg / "createdb", "-h", server.host, "-p", str(server.port), "-U", server.user]
        done = subprocess.run(
            [*map(str, createdb), server.database],
            env={**os.environ, "PGPASSWORD": server.password},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        yield server
    finally:
        run(pg / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ Spark standalone


@dataclass
class SparkCluster:
    master_url: str
    ui_url: str
    processes: list[Started]

    def state(self) -> dict:
        return httpx.get(f"{self.ui_url}/json/", timeout=5).json()

    def wait_ready(self) -> None:
        def worker_alive() -> bool:
            for process in self.processes:
                process.check_alive()
            try:
                workers = self.state().get("workers", [])
            except (httpx.HTTPError, ValueError):
                return False
            return any(w.get("state") == "ALIVE" for w in workers)

        wait_until(worker_alive, STARTED_WITHIN_S, "a Spark worker registered with the master")


def spark_env(base: dict[str, str]) -> dict[str, str]:
    """What `spark-class` and the executors need: this environment's python first on PATH (pyspark's
    launcher scripts run `python3`) and as PYSPARK_PYTHON, and loopback as the host's address."""
    return {
        **base,
        "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def ui(port: int) -> list[str]:
    return ["--webui-port", str(port)]


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory) -> Iterator[SparkCluster]:
    """A master and one worker (1 core, 1 GiB) on free ports, started (see `wait_ready`); stopped by
    PID at the end."""
    root = tmp_path_factory.mktemp("spark-standalone")
    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    env = spark_env({**os.environ, "SPARK_LOG_DIR": str(root), "SPARK_WORKER_DIR": str(root / "work")})
    port, ui_port = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    deploy = "org.apache.spark.deploy"
    worker_options = ["--host", "127.0.0.1", "--port", str(free_port()), *ui(free_port())]
    worker_options += ["--cores", "1", "--memory", "1g", "--work-dir", str(root / "work")]
    processes = [
        start(
            "spark-master",
            [
                spark_class,
                f"{deploy}.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *ui(ui_port),
            ],
            env,
            root,
        )
    ]
    try:
        processes.append(
            start(  # it registers with the master as soon as the master answers
                "spark-worker",
                [spark_class, f"{deploy}.worker.Worker", master_url, *worker_options],
                env,
                root,
            )
        )
        yield SparkCluster(master_url, f"http://127.0.0.1:{ui_port}", processes)
    finally:
        stop_together(processes)


# ------------------------------------------------------------------------------ Dagster


@dataclass
class ProductionDagster:
    client: DagsterGraphQLClient
    postgres: Postgres
    settings: Settings  # what the runs see
    processes: list[Started]

    def run_to_end(self, run_id: str) -> str:
        def finished() -> str | None:
            for process in self.processes:
                process.check_alive()
            status = self.client.get_run_status(run_id).value
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        return wait_until(finished, RUN_WITHIN_S, f"run {run_id} to finish", poll_s=0.5)

    def stored_run(self, run_id: str) -> tuple[str, set[str]]:
        """The run's status and its materialised assets, read from the Postgres tables."""
        with self.postgres.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
            (status,) = cursor.fetchone()
            cursor.execute(
                "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                (run_id, "ASSET_MATERIALIZATION"),
            )
            assets = {row[0] for row in cursor.fetchall()}
        connection.close()
        return status, assets

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)


def dagster_yaml_variables() -> set[str]:
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if set(node) == {"env"}:
                found.add(node["env"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text()))
    return found


@pytest.fixture(scope="module")
def production_dagster(
    postgres,
    spark_cluster,
    services_env,
    dirs,
    tmp_path_factory,
) -> Iterator[ProductionDagster]:
    """docker/dagster.yaml in DAGSTER_HOME, its variables pointing at the fixture's Postgres; the
    daemon and the webserver on the project's workspace; FLEAD settings for the session's broker and
    MongoDB, an API (in this process) and the Spark cluster. Every process stopped by PID."""
    root = tmp_path_factory.mktemp("production-dagster")
    home = root / "dagster-home"
    home.mkdir()
    shutil.copy(REPO / "docker" / "dagster.yaml", home / "dagster.yaml")
    lake_dir, labelled_dir = dirs
    dagster_vars = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_HOST": postgres.host,
        "DAGSTER_POSTGRES_PORT": str(postgres.port),
        "DAGSTER_POSTGRES_USER": postgres.user,
        "DAGSTER_POSTGRES_PASSWORD": postgres.password,
        "DAGSTER_POSTGRES_DB": postgres.database,
        "DAGSTER_STORAGE_DIR": str(root / "storage"),
        "DAGSTER_COMPUTE_LOGS_DIR": str(root / "compute_logs"),
    }
    assert dagster_yaml_variables() <= set(dagster_vars), "set every variable dagster.yaml reads"
    flead_vars = {
        **services_env,
        "FLEAD_HOME": str(root / "flead"),
        "FLEAD_MONGO_DB": f"rehearsal_{free_port()}",
        "FLEAD_API_URL": f"http://127.0.0.1:{free_port()}",
        "FLEAD_API_ADMIN_KEY": "rehearsal-admin-key",
        "FLEAD_LAKE_DIR": str(lake_dir),
        "FLEAD_LABELLED_DIR": str(labelled_dir),
        "FLEAD_SPARK_MASTER": spark_cluster.master_url,
        "FLEAD_SPARK_DRIVER_MEMORY": "1g",
        "FLEAD_SPARK_SHUFFLE_PARTITIONS": "2",  # one executor core: fewer, larger tasks
        # as in compose: the sensors do not start local copies of the API and the trainer
        "FLEAD_SUPERVISE_API": "false",
        "FLEAD_SUPERVISE_TRAINER": "false",
    }
    env = spark_env({**os.environ, **flead_vars, **dagster_vars})
    settings = Settings(**{k.removeprefix("FLEAD_").lower(): v for k, v in flead_vars.items()})
    web_port = free_port()
    workspace = str(REPO / "workspace.yaml")
    api = LiveServer(settings).start()
    processes: list[Started] = []
    try:
        processes.append(
            start("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], env, root)
        )
        processes.append(
            start(
                "dagster-webserver",
                [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(web_port)],
                env,
                root,
            )
        )
        client = DagsterGraphQLClient("127.0.0.1", port_number=web_port, timeout=30)
        dagster = ProductionDagster(client, postgres, settings, processes)

        def location_loaded() -> bool:
            for process in processes:
                process.check_alive()
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{web_port}/graphql",
                    json={"query": LOCATIONS_QUERY},
                    timeout=5,
                ).json()
            except (httpx.HTTPError, ValueError):
                return False
            entries = answer["data"]["workspaceOrError"]["locationEntries"]
            return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)

        wait_until(location_loaded, STARTED_WITHIN_S, "the webserver to answer with the code location loaded")
        spark_cluster.wait_ready()
        yield dagster
    finally:
        stop_together(processes)
        api.stop()
        client_mongo = make_mongo_client(settings)
        client_mongo.drop_database(settings.mongo_db)
        client_mongo.close()


# ------------------------------------------------------------------------------ the rehearsal


def test_dagster_on_postgres_runs_a_queued_materialisation_to_success(production_dagster):
    dagster = production_dagster
    run_id = dagster.client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=LOCATION,
        asset_selection=["raw_intel_lab"],
        run_config={"ops": {"raw_intel_lab": {"config": {"source": "synthetic", "n_devices": 2, "days": 1}}}},
    )
    status = dagster.run_to_end(run_id)
    assert status == "SUCCESS", dagster.logs()
    stored_status, assets = dagster.stored_run(run_id)
    assert stored_status == "SUCCESS"
    assert assets == {'["raw_intel_lab"]'}
    assert any(Path(dagster.settings.data_dir).rglob("*")), "the asset wrote the raw data"


def test_evaluation_job_runs_on_the_spark_standalone_cluster(production_dagster, spark_cluster, dirs):
    dagster = production_dagster
    settings = dagster.settings
    lake_dir, labelled_dir = dirs
    run_id = dagster.client.submit_job_execution(
        "evaluation_job",
        repository_location_name=LOCATION,
        tags=range_tags(DAYS[0].isoformat(), DAYS[-1].isoformat()),
    )
    status = dagster.run_to_end(run_id)
    assert status == "SUCCESS", dagster.logs()
    assert dagster.stored_run(run_id) == ("SUCCESS", {'["global_model_evaluation"]'})

    # It ran as an application of the standalone cluster, not in a local Spark.
    apps = spark_cluster.state()
    assert [a["name"] for a in apps["completedapps"] + apps["activeapps"]] == ["flead-evaluation"]

    # The rows are those of the in-process scoring with the same model, row for row.
    version, model = GlobalApiClient(settings.api_url, "unused").model_bytes()
    expected = score_lake(
        lake_dir, DAYS, model, quantile=settings.evaluation_threshold_quantile, labelled_dir=labelled_dir
    )
    written = pl.read_parquet(
        f"{settings.evaluations_dir}/version={version}/date=*/part-0.parquet", hive_partitioning=True
    )
    columns = [c for c in expected.columns if c != "date"]
    assert written.height == expected.height > 9_000
    assert_frame_equal(
        written.select(columns).sort("device_id", "ts"), expected.select(columns).sort("device_id", "ts")
    )
    client = make_mongo_client(settings)
    try:
        stored = {e["_id"] for e in get_database(client, settings)[settings.collection_evaluations].find()}
    finally:
        client.close()
    assert stored == {f"v{version}:{day}" for day in DAYS}
