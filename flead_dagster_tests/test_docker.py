"""Static checks of the production deployment in docker/ (no Docker engine on these machines).

The compose file is interpolated the way `docker compose` does it (with docker/.env.example's values,
secrets filled in) and validated against the Compose Specification's JSON schema kept in
docker/compose-spec.schema.json; then the references between its parts are checked. Each checker
returns a list of problems, and each is also shown to catch a broken copy of the file.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib
import json
import os
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from flead.config import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
SCHEMA = DOCKER / "compose-spec.schema.json"
# docker/README.md says where the schema comes from; this catches an edited or swapped copy.
SCHEMA_SHA256 = "a85a0e558502b7fec90b3ad4095d721e31749e9a305b1d80e09c1e64f939b92d"
FLEAD_SERVICES = ("api", "stream-trainer", "notifier", "dagster-code")
OPTIONAL = {"FLEAD_TRAINER_API_KEY", "FLEAD_ALERTS_WEBHOOK_URLS", "FLEAD_ALERTS_WEBHOOK_SECRET"}


# ------------------------------------------------------------------------------ interpolation


class MissingVariable(ValueError):
    pass


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def interpolate(text: str, env: dict[str, str], used: set[str] | None = None) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, ${VAR+alt}, nested in the default. Names seen are added to `used`."""
    used = set() if used is None else used
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expression(text[i + 2 : end], env, used))
            i = end + 1
        elif text[i] == "$" and (m := re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])):
            used.add(m.group(0))
            out.append(env.get(m.group(0), ""))
            i += 1 + m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expression(expr: str, env: dict[str, str], used: set[str]) -> str:
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", expr, re.S)
    if not m:
        raise ValueError(f"bad interpolation ${{{expr}}}")
    name, op, arg = m.groups()
    used.add(name)
    argument = interpolate(arg or "", env, used)  # also records the names nested in the argument
    value = env.get(name)
    is_set, non_empty = value is not None, bool(value)
    if op is None:
        return value or ""
    if op in (":-", "-"):
        return value if (non_empty if op == ":-" else is_set) else argument
    if op in (":?", "?"):
        if non_empty if op == ":?" else is_set:
            return value
        raise MissingVariable(f"{name}: {argument}")
    return argument if (non_empty if op == ":+" else is_set) else ""


def walk_strings(node, fn):
    """A copy of a YAML tree with `fn` applied to every string (keys included)."""
    if isinstance(node, dict):
        return {walk_strings(k, fn): walk_strings(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [walk_strings(v, fn) for v in node]
    return fn(node) if isinstance(node, str) else node


def read_dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def example_env(fill_secrets: bool = True) -> dict[str, str]:
    env = read_dotenv(DOCKER / ".env.example")
    if fill_secrets:
        env = {k: v or f"test-{k.lower()}" for k, v in env.items()}
        env["FLEAD_TRAINER_API_KEY"] = ""  # optional: exercises the nested default
        env["FLEAD_ALERTS_WEBHOOK_URLS"] = "https://hooks.example.org/flead"
    return env


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def resolved_compose(env: dict[str, str] | None = None) -> dict:
    env = example_env() if env is None else env
    return walk_strings(raw_compose(), lambda s: interpolate(s, env))


def interpolated_names(doc: dict) -> set[str]:
    used: set[str] = set()
    walk_strings(doc, lambda text: _names(text, used))
    return used


def _names(text: str, used: set[str]) -> str:
    """Record the names in `text`, with every name set so that no ${VAR:?} raises."""
    return interpolate(text, dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text), "x"), used)


# ---------------------------------------------------------------------------------- checkers


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(doc)]


def image_problems(doc: dict, base: Path = DOCKER) -> list[str]:
    problems = []
    for name, service in doc["services"].items():
        build = service.get("build")
        if build is None:
            if not service.get("image"):
                problems.append(f"{name}: neither image nor build")
            continue
        build = {"context": build} if isinstance(build, str) else build
        dockerfile = (base / build.get("context", ".")).resolve() / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"{name}: Dockerfile {dockerfile} does not exist")
    return problems


def _published(entry) -> tuple[str, str] | None:
    """(host ip, host port) of a `ports` entry, None when nothing is published on the host."""
    if isinstance(entry, dict):
        return (entry.get("host_ip", ""), str(entry["published"])) if entry.get("published") else None
    parts = str(entry).split("/")[0].rsplit(":", 2)
    if len(parts) == 1:
        return None  # container port only: an ephemeral host port
    return ("" if len(parts) == 2 else parts[0], parts[-2])


def host_port_problems(doc: dict) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for name, service in doc["services"].items():
        replicas = service.get("deploy", {}).get("replicas", 1)
        for entry in service.get("ports", []):
            published = _published(entry)
            if published is None:
                continue
            port = published[1]
            if int(replicas) > 1:
                problems.append(f"{name}: {replicas} replicas cannot all publish host port {port}")
            if port in seen:
                problems.append(f"host port {port} published by {seen[port]} and {name}")
            seen[port] = name
    return problems


def _named_volume(entry) -> str | None:
    if isinstance(entry, dict):
        return entry.get("source") if entry.get("type", "volume") == "volume" else None
    source = str(entry).split(":")[0]
    if ":" not in str(entry) or source.startswith((".", "/", "~", "$")):
        return None  # anonymous volume or bind mount
    return source


def volume_problems(doc: dict) -> list[str]:
    declared = set(doc.get("volumes") or {})
    used = {
        volume
        for service in doc["services"].values()
        for entry in service.get("volumes", [])
        if (volume := _named_volume(entry))
    }
    return [f"volume {v} used but not declared" for v in sorted(used - declared)] + [
        f"volume {v} declared but never used" for v in sorted(declared - used)
    ]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def unknown_flead_variables(doc: dict) -> list[str]:
    fields = {f"FLEAD_{name.upper()}" for name in Settings.model_fields}
    return [
        f"{name}: {key} is no field of flead.config.Settings"
        for name, service in doc["services"].items()
        for key in _environment(service)
        if key.startswith("FLEAD_") and key not in fields
    ]


def dependency_problems(doc: dict) -> list[str]:
    services = doc["services"]
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for target, spec in depends.items():
            condition = spec.get("condition")
            if target not in services:
                problems.append(f"{name}: depends on unknown service {target}")
            elif target in one_shot and condition != "service_completed_successfully":
                problems.append(f"{name}: waits for one-shot {target} with {condition}")
            elif target not in one_shot and condition != "service_healthy":
                problems.append(f"{name}: waits for {target} with {condition}, not service_healthy")
            elif target not in one_shot and "healthcheck" not in services[target]:
                problems.append(f"{name}: waits for {target} to be healthy, which has no healthcheck")
    return problems


def healthcheck_problems(doc: dict) -> list[str]:
    return [
        f"{name}: long-running without a healthcheck"
        for name, service in doc["services"].items()
        if service.get("restart") != "no"
        and (not service.get("healthcheck") or service["healthcheck"].get("disable"))
    ]


def literal_secret_problems(doc: dict) -> list[str]:
    """Secrets must come from the .env file: a secret-named variable's value must interpolate."""
    secret = re.compile(r"PASSWORD|SECRET|_KEY$|API_KEY")
    return [
        f"{name}: {key} has a literal value"
        for name, service in doc["services"].items()
        for key, value in _environment(service).items()
        if secret.search(key) and not (value or "").startswith("${")
    ]


# ------------------------------------------------------------------------------------- tests


def test_compose_parses_and_matches_the_compose_specification():
    assert schema_errors(resolved_compose()) == []
    assert schema_errors(raw_compose()) == []


def test_the_schema_catches_a_misspelt_key_and_a_wrong_type():
    doc = resolved_compose()
    doc["services"]["api"]["restrat"] = "always"
    doc["services"]["postgres"]["healthcheck"]["retries"] = ["five"]
    errors = schema_errors(doc)
    assert any("restrat" in e for e in errors) and any("retries" in e for e in errors)


def test_the_schema_is_the_recorded_copy():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, "docker/README.md: Schema"
    assert "compose-spec.schema.json" in (DOCKER / "README.md").read_text()


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("a$$b ${SET} $SET ${NOPE:-d} ${EMPTY:-d} ${EMPTY-d}", env) == "a$b v v d d "
    assert interpolate("${NOPE:-${SET}}", env) == "v"
    assert interpolate("${SET:+alt}${NOPE:+alt}", env) == "alt"
    with pytest.raises(MissingVariable, match="EMPTY: fill me"):
        interpolate("${EMPTY:?fill me}", env)
    assert interpolate("${EMPTY?fine}", env) == ""


def test_every_interpolated_variable_is_in_env_example_and_every_listed_one_is_used():
    used = interpolated_names(raw_compose())
    listed = set(read_dotenv(DOCKER / ".env.example"))
    assert sorted(used - listed) == [], "add these to docker/.env.example"
    assert sorted(listed - used) == [], "docker/.env.example lists variables compose never reads"


def test_required_secrets_stop_compose_when_empty():
    env = example_env(fill_secrets=False)
    required = [k for k, v in env.items() if not v and k not in OPTIONAL]
    assert {"FLEAD_API_ADMIN_KEY", "FLEAD_MONGO_PASSWORD", "MONGO_ROOT_PASSWORD"} <= set(required)
    for name in required:
        filled = {**example_env(), name: ""}
        with pytest.raises(MissingVariable, match=name):
            resolved_compose(filled)
    resolved_compose(example_env())  # and all filled in, it resolves


def test_no_secret_is_written_into_the_compose_file():
    assert literal_secret_problems(raw_compose()) == []
    doc = raw_compose()
    doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    assert literal_secret_problems(doc) == ["postgres: POSTGRES_PASSWORD has a literal value"]


def test_every_service_has_an_image_or_a_build_with_a_dockerfile():
    doc = resolved_compose()
    assert image_problems(doc) == []
    assert all(":" in s["image"] and not s["image"].endswith(":latest") for s in doc["services"].values())
    broken = copy.deepcopy(doc)
    broken["services"]["api"]["build"]["dockerfile"] = "docker/Dockerfile.missing"
    del broken["services"]["postgres"]["image"]
    assert len(image_problems(broken)) == 2


def test_every_host_port_is_published_once():
    doc = resolved_compose()
    assert host_port_problems(doc) == []
    published = {_published(p)[1] for s in doc["services"].values() for p in s.get("ports", [])}
    assert {"8000", "3000", "19092", "29092", "39092"} <= published
    clash = copy.deepcopy(doc)
    clash["services"]["dagster-webserver"]["ports"] = ["127.0.0.1:8000:3000"]
    clash["services"]["api"]["ports"] = [{"target": 8000, "published": 9000}]
    problems = host_port_problems(clash)
    assert any("8000" in p and "dagster-webserver" in p for p in problems)
    assert any("replicas" in p for p in problems)


def test_named_volumes_are_declared_and_used():
    doc = resolved_compose()
    assert volume_problems(doc) == []
    broken = copy.deepcopy(doc)
    del broken["volumes"]["postgres-data"]
    broken["volumes"]["orphan"] = None
    assert volume_problems(broken) == [
        "volume postgres-data used but not declared",
        "volume orphan declared but never used",
    ]


def test_flead_variables_are_settings_fields_and_valid_settings(monkeypatch):
    doc = resolved_compose()
    assert unknown_flead_variables(doc) == []
    for name in FLEAD_SERVICES:
        env = {k: v for k, v in _environment(doc["services"][name]).items() if k.startswith("FLEAD_")}
        for key in list(os.environ):
            if key.startswith("FLEAD_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # validates every value, the security rules included
        assert not (settings.supervise_api or settings.supervise_trainer or settings.supervise_notifier), name
        assert settings.kafka_bootstrap_servers.count(",") == 2 and "replicaSet=rs0" in settings.mongo_uri
        assert settings.spark_master == "spark://spark-master:7077"
    broken = copy.deepcopy(doc)
    broken["services"]["api"]["environment"]["FLEAD_KAFKA_BROKERS"] = "kafka-1:9092"
    assert unknown_flead_variables(broken) == [
        "api: FLEAD_KAFKA_BROKERS is no field of flead.config.Settings"
    ]


def test_clients_reach_the_api_through_the_proxy_and_the_api_binds_all_interfaces():
    doc = resolved_compose()
    services = doc["services"]
    api_url = _environment(services["api"])["FLEAD_API_URL"]
    assert api_url.startswith("http://0.0.0.0:")
    api_port = api_url.rsplit(":", 1)[1]
    nginx = (DOCKER / "nginx.conf").read_text()
    assert re.search(rf"server api:{api_port}\b", nginx)
    listen = re.search(r"listen (\d+);", nginx).group(1)
    assert services["api-proxy"]["ports"][0].endswith(f":{listen}")
    for name in ("stream-trainer", "dagster-code"):
        assert _environment(services[name])["FLEAD_API_URL"] == f"http://api-proxy:{listen}", name
    body = re.search(r"client_max_body_size (\d+)m;", nginx).group(1)
    for limit in ("api_max_body_bytes", "api_max_batch_body_bytes"):
        assert int(body) * 1024 * 1024 >= Settings.model_fields[limit].default, limit
    assert services["api"]["deploy"]["replicas"] == 2


def test_dependencies_wait_for_health_or_completion():
    doc = resolved_compose()
    assert dependency_problems(doc) == []
    broken = copy.deepcopy(doc)
    broken["services"]["stream-trainer"]["depends_on"]["kafka-init"]["condition"] = "service_started"
    broken["services"]["api"]["depends_on"]["ghost"] = {"condition": "service_healthy"}
    assert len(dependency_problems(broken)) == 2


def test_every_long_running_service_has_a_healthcheck():
    doc = resolved_compose()
    assert healthcheck_problems(doc) == []
    one_shot = {n for n, s in doc["services"].items() if s.get("restart") == "no"}
    assert one_shot == {"kafka-init", "mongo-init"}
    broken = copy.deepcopy(doc)
    del broken["services"]["spark-worker-2"]["healthcheck"]
    assert healthcheck_problems(broken) == ["spark-worker-2: long-running without a healthcheck"]


def test_trainer_replicas_fit_the_readings_partitions():
    doc = resolved_compose()
    trainer = doc["services"]["stream-trainer"]
    partitions = int(_environment(trainer)["FLEAD_TOPIC_READINGS_PARTITIONS"])
    assert 1 < trainer["deploy"]["replicas"] <= partitions
    init = doc["services"]["kafka-init"]
    assert int(_environment(init)["READINGS_PARTITIONS"]) == partitions  # topic made the same size
    fewer = resolved_compose({**example_env(), "FLEAD_TOPIC_READINGS_PARTITIONS": "2"})
    assert (
        int(_environment(fewer["services"]["stream-trainer"])["FLEAD_TOPIC_READINGS_PARTITIONS"])
        < (fewer["services"]["stream-trainer"]["deploy"]["replicas"])
    )  # the check above is not vacuous


def test_kafka_is_a_replicated_kraft_quorum_and_init_creates_every_flead_topic():
    doc = resolved_compose()
    brokers = {n: _environment(s) for n, s in doc["services"].items() if re.fullmatch(r"kafka-\d", n)}
    assert len(brokers) == 3
    assert len({env["KAFKA_NODE_ID"] for env in brokers.values()}) == 3
    for env in brokers.values():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    script = doc["services"]["kafka-init"]["command"][0]
    assert "--replication-factor 3 --config min.insync.replicas=2" in script
    created = dict(re.findall(r"^topic (\S+) (\S+)", script, re.M))
    defaults = Settings.model_construct()
    topics = [
        getattr(defaults, n)
        for n in Settings.model_fields
        if n.startswith("topic_") and "partitions" not in n and n != "topic_replication_factor"
    ]
    assert sorted(created) == sorted(topics)
    # Topics a FLEAD process creates itself (e.g. the trainer's outputs) are replicated alike.
    assert _environment(doc["services"]["stream-trainer"])["FLEAD_TOPIC_REPLICATION_FACTOR"] == "3"
    assert created[defaults.topic_readings] == '"$READINGS_PARTITIONS"'


def test_mongo_is_a_keyfile_authenticated_replica_set():
    doc = resolved_compose()
    members = [s for n, s in doc["services"].items() if re.fullmatch(r"mongo-\d", n)]
    assert len(members) == 3
    for member in members:
        assert "--replSet rs0 --keyFile" in member["command"][0]
    init = doc["services"]["mongo-init"]["command"][0]
    assert init.count('host: "mongo-') == 3 and "rs.initiate" in init


# --------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip()
    ]


def dockerfile_stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    args = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instruction, rest in instructions:
        if instruction == "ARG" and current is None:  # global ARGs, usable in FROM
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if instruction == "FROM":
            image, _, name = rest.partition(" AS ")
            current = name.strip() or f"stage{len(stages)}"
            stages[current] = [("FROM", interpolate(image.strip(), args))]
            continue
        stages[current].append((instruction, rest))
    return stages


def test_dockerfile_builds_in_two_stages_and_runs_flead_as_a_user():
    stages = dockerfile_stages(dockerfile_instructions(DOCKER / "Dockerfile"))
    assert list(stages) == ["builder", "runtime"]
    for body in stages.values():
        base = body[0][1]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    builder = " ".join(rest for _, rest in stages["builder"])
    assert 'pip install -c constraints.txt ".[production]"' in builder
    runtime = stages["runtime"]
    runtime_runs = " ".join(rest for kind, rest in runtime if kind == "RUN")
    assert "openjdk-17-jre-headless" in runtime_runs
    assert not re.search(r"build-essential|\bgcc\b|\bmake\b|-dev\b", runtime_runs)
    user = [rest for kind, rest in runtime if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert [json.loads(rest) for kind, rest in runtime if kind == "ENTRYPOINT"][-1] == ["flead"]
    copied = [rest for kind, rest in runtime if kind == "COPY"]
    assert any("--from=builder /opt/venv" in c for c in copied)


def test_dockerfile_copies_only_files_that_exist_and_are_not_docker_ignored():
    ignored = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for kind, rest in dockerfile_instructions(DOCKER / "Dockerfile"):
        if kind != "COPY" or rest.startswith("--from"):
            continue
        for source in shlex.split(rest)[:-1]:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"


def test_the_image_copies_every_package_it_installs():
    """Every package pyproject's setuptools find installs (the `flead` script's `flead_cli` too)."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {
        path.parent.name
        for path in REPO.glob("*/__init__.py")
        if any(fnmatch.fnmatch(path.parent.name, p) for p in find["include"])
        and not any(fnmatch.fnmatch(path.parent.name, p) for p in find["exclude"])
    }
    copied = {
        shlex.split(rest)[0].rstrip("/")
        for kind, rest in dockerfile_instructions(DOCKER / "Dockerfile")
        if kind == "COPY" and not rest.startswith("--from")
    }
    assert {"flead", "flead_cli", "services", "flead_dagster"} <= packages
    assert packages <= copied, f"installed but not copied into the image: {sorted(packages - copied)}"


def production_extra() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "production"
    ]


def test_dagster_postgres_pin_matches_the_dagster_pin():
    """dagster libraries are versioned 0.(minor+16).patch against dagster 1.minor.patch, in the
    production extra the image installs and in the lock."""
    lock = (REPO / "constraints.txt").read_text()
    core = re.search(r"^dagster==1\.(\d+)\.(\d+)$", lock, re.M)
    assert core
    wanted = f"dagster-postgres==0.{int(core.group(1)) + 16}.{core.group(2)}"
    assert wanted in production_extra()
    assert re.search(rf"^{re.escape(wanted)}$", lock, re.M)


def test_the_postgres_driver_dagster_yaml_names_is_installed_by_the_production_extra():
    scheme = yaml.safe_load((DOCKER / "dagster.yaml").read_text())["storage"]["postgres"]["postgres_db"]
    assert scheme["scheme"] == "postgresql+psycopg2"  # SQLAlchemy 2.1's bare `postgresql` is psycopg 3
    assert any(re.match(r"psycopg2(-binary)?\b", requirement) for requirement in production_extra())
    assert re.search(r"^psycopg2-binary==", (REPO / "constraints.txt").read_text(), re.M)


# ----------------------------------------------------------------------------------- Dagster


def test_dagster_yaml_is_a_valid_instance_config_with_a_queue_postgres_and_no_telemetry(tmp_path):
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DOCKER / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # dagster's own schema; raises when invalid
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert coordinator["config"]["max_concurrent_runs"] > 0
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert all(isinstance(postgres[k], dict) and "env" in postgres[k] for k in ("hostname", "password"))
    assert config["telemetry"]["enabled"] is False
    assert config["run_monitoring"]["enabled"] is True
    for section in ("run_coordinator", "run_launcher", "local_artifact_storage", "compute_logs"):
        cls = getattr(importlib.import_module(config[section]["module"]), config[section]["class"])
        if "config" in config[section]:
            assert validate_config(cls.config_type(), config[section]["config"]).success, section


def test_dagster_services_have_the_database_variables_dagster_yaml_reads():
    wanted = set(re.findall(r"env: (\w+)", (DOCKER / "dagster.yaml").read_text()))
    assert wanted
    doc = resolved_compose()
    for name in ("dagster-webserver", "dagster-daemon", "dagster-code"):
        assert wanted <= set(_environment(doc["services"][name])), name


def test_workspace_points_at_the_code_server():
    from dagster._core.workspace.config_schema import ensure_workspace_config

    workspace = ensure_workspace_config(yaml.safe_load((DOCKER / "workspace.yaml").read_text()), "ws")
    grpc = workspace["load_from"][0]["grpc_server"]
    command = resolved_compose()["services"]["dagster-code"]["command"]
    assert command[command.index("--port") + 1] == str(grpc["port"])
    assert grpc["host"] == "dagster-code"
    code = _environment(resolved_compose()["services"]["dagster-code"])
    assert code["FLEAD_SUPERVISE_API"] == "false" and code["FLEAD_SUPERVISE_TRAINER"] == "false"
