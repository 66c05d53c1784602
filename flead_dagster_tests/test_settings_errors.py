"""Bad settings explain themselves: every bad variable at once, by name, with its value and what is allowed.

The command line is run as a real subprocess (``python -m flead_cli ...``), as an operator runs it: exit
code 2, one message on stderr, no traceback.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flead.config import Address, Settings, SettingsError, load_settings
from flead.federated.config import STRATEGY_NAMES
from flead.local.services import free_port

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], tmp_path: Path, timeout: float = 60, **variables: str):
    """``python -m <args>`` in `tmp_path` (no .env there unless the test writes one), FLEAD_* cleared."""
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("FLEAD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["FLEAD_HOME"] = str(tmp_path / "home")
    env |= variables
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_refused(result: subprocess.CompletedProcess, *lines: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    for line in lines:
        assert line in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("FLEAD_KAFKA_BOOTSTRAP_SERVERS", "garbage", "expected host:port, several separated by commas"),
        (
            "FLEAD_KAFKA_BOOTSTRAP_SERVERS",
            "kafka-1:9092,kafka-2:70000",
            "expected host:port, several separated by commas (e.g. kafka-1:9092,kafka-2:9092); "
            "the port of 'kafka-2:70000' is not in 1..65535",
        ),
        ("FLEAD_TOPIC_READINGS_PARTITIONS", "-3", "expected an integer >= 1"),
        ("FLEAD_TRAINER_PUSH_EVERY", "lots", "expected an integer >= 1"),
        ("FLEAD_MAX_STALENESS", "-1", "expected an integer >= 0"),
        ("FLEAD_SUPERVISE_API", "maybe", "expected true or false"),
        ("FLEAD_AGGREGATION_STRATEGY", "fedprox", f"expected one of {', '.join(STRATEGY_NAMES)}"),
        ("FLEAD_API_URL", "notaurl", "expected an http:// or https:// URL with a host"),
        ("FLEAD_DAGSTER_PORT", "70000", "expected an integer from 1 to 65535"),
        ("FLEAD_MONGO_URI", "http://127.0.0.1:27017", "expected mongodb://"),
        ("FLEAD_API_BODY_TIMEOUT_S", "nan", "expected a finite number > 0"),
        ("FLEAD_TOPIC_READINGS", "my readings", "expected a Kafka topic name"),
    ],
)
def test_a_bad_variable_is_named_with_its_value_and_what_is_allowed(
    tmp_path, monkeypatch, variable, value, allowed
):
    monkeypatch.chdir(tmp_path)  # no .env
    for name in [n for n in os.environ if n.upper().startswith("FLEAD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    [problem] = error.value.problems
    assert problem.startswith(f"{variable}={value!r}: {allowed}"), problem


def test_the_command_line_refuses_a_bad_variable_with_one_message_and_exit_2(tmp_path):
    result = run(["flead_cli", "config"], tmp_path, FLEAD_SUPERVISE_API="maybe")
    assert_refused(
        result, "error: invalid settings (1):", "FLEAD_SUPERVISE_API='maybe': expected true or false"
    )


def test_every_bad_variable_is_listed_at_once(tmp_path):
    bad = {
        "FLEAD_KAFKA_BOOTSTRAP_SERVERS": "garbage",
        "FLEAD_TOPIC_READINGS_PARTITIONS": "-3",
        "FLEAD_TRAINER_PUSH_EVERY": "lots",
        "FLEAD_SUPERVISE_API": "maybe",
        "FLEAD_AGGREGATION_STRATEGY": "fedprox",
        "FLEAD_API_URL": "notaurl",
        "FLEAD_TRAINER_HEALTH_PORT": "70000",
    }
    result = run(["flead_cli", "config"], tmp_path, **bad)
    assert_refused(result, f"invalid settings ({len(bad)}):", *(f"{k}={v!r}: " for k, v in bad.items()))


def test_a_bad_line_of_the_dotenv_file_is_named_as_such(tmp_path):
    (tmp_path / ".env").write_text("FLEAD_MONGO_DB=flead\nFLEAD_SUPERVISE_TRAINER=perhaps\n")
    result = run(["flead_cli", "config"], tmp_path)
    assert_refused(result, "FLEAD_SUPERVISE_TRAINER='perhaps' (in .env): expected true or false")


def test_a_password_in_a_bad_uri_is_masked(tmp_path):
    result = run(["flead_cli", "config"], tmp_path, FLEAD_MONGO_URI="http://flead:hunter2@db:27017")
    assert_refused(result, "FLEAD_MONGO_URI='http://flead:********@db:27017': expected mongodb://")
    assert "hunter2" not in result.stdout + result.stderr


def test_api_run_with_an_unknown_strategy_fails_at_once_without_serving(tmp_path):
    started = time.monotonic()
    # A free port: were the server to start, the call would block until the timeout.
    result = run(
        ["flead_cli", "api", "run"],
        tmp_path,
        timeout=120,
        FLEAD_AGGREGATION_STRATEGY="fedprox",
        FLEAD_API_URL=f"http://127.0.0.1:{free_port()}",
    )
    assert_refused(result, "FLEAD_AGGREGATION_STRATEGY='fedprox': expected one of")
    assert "serving" not in result.stdout
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("entry", ["services.global_api", "services.stream_trainer"])
def test_the_services_entry_points_refuse_bad_settings_too(tmp_path, entry):
    result = run([entry], tmp_path, timeout=120, FLEAD_TOPIC_READINGS_PARTITIONS="0")
    assert_refused(result, "FLEAD_TOPIC_READINGS_PARTITIONS='0': expected an integer >= 1")


def test_a_valid_environment_still_works(tmp_path):
    result = run(
        ["flead_cli", "config"],
        tmp_path,
        FLEAD_KAFKA_BOOTSTRAP_SERVERS="kafka-1:9092,kafka-2:9092,kafka-3:9092",
        FLEAD_MONGO_URI="mongodb://mongo-1:27017,mongo-2:27017/?replicaSet=rs0&authSource=flead",
        FLEAD_API_URL="https://flead.example.com",
        FLEAD_AGGREGATION_STRATEGY="trimmed_mean",
        FLEAD_SUPERVISE_API="false",
        FLEAD_SPARK_MASTER="spark://spark-master:7077",
        FLEAD_TRAINER_HEALTH_PORT="0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FLEAD settings" in result.stdout


def test_the_defaults_are_valid(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.upper().startswith("FLEAD_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    assert load_settings() == Settings()


def test_load_settings_lists_arguments_and_contradictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLEAD_KAFKA_SESSION_TIMEOUT_MS", raising=False)
    with pytest.raises(SettingsError) as refused:
        load_settings(spark_driver_memory="lots", download_attempts=0)
    assert refused.value.problems == [
        "download_attempts=0 (argument): expected an integer >= 1",
        "spark_driver_memory='lots' (argument): expected a JVM memory size: a number and k, m, g or t "
        "(e.g. 512m, 2g)",
    ]
    with pytest.raises(SettingsError, match="FLEAD_KAFKA_HEARTBEAT_INTERVAL_MS=6000 must be lower than"):
        load_settings(kafka_heartbeat_interval_ms=6000)
    assert isinstance(refused.value, ValueError)  # callers catching ValueError keep working


def test_an_api_url_without_a_port_serves_on_the_schemes_port():
    assert Address.parse("http://flead.example.com") == ("flead.example.com", 80)
    assert Address.parse("https://flead.example.com/") == ("flead.example.com", 443)


def test_the_strategies_accepted_are_the_ones_the_aggregation_code_knows():
    from flead.federated.strategies import STRATEGIES

    assert set(STRATEGIES) == set(STRATEGY_NAMES)
    description = Settings.model_fields["aggregation_strategy"].description
    assert all(name in description for name in STRATEGY_NAMES)
