import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from flead.config import Settings, settings_markdown_table

REPO = Path(__file__).resolve().parents[1]


def test_defaults_point_at_the_embedded_services(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("FLEAD_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(REPO / "flead_dagster_tests")  # no .env here
    settings = Settings()
    assert settings.kafka_address == ("127.0.0.1", 9092)
    assert settings.mongo_address == ("127.0.0.1", 27017)
    assert settings.topic_readings_partitions >= 8
    assert settings.kafka_session_timeout_ms == 6000 and settings.kafka_heartbeat_interval_ms == 2000
    assert settings.lake_dir == Path(".flead/lake")


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("FLEAD_KAFKA_BOOTSTRAP_SERVERS", "broker-a:19092,broker-b:19092")
    monkeypatch.setenv("FLEAD_TOPIC_READINGS_PARTITIONS", "24")
    monkeypatch.setenv("FLEAD_HOME", "/srv/flead")
    monkeypatch.setenv("FLEAD_API_ADMIN_KEY", "s3cret")
    settings = Settings()
    assert settings.kafka_address == ("broker-a", 19092)
    assert settings.topic_readings_partitions == 24
    assert settings.state_dir == Path("/srv/flead/state")
    assert settings.api_admin_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_dotenv_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FLEAD_MONGO_DB=from_dotenv\nFLEAD_CONSUMER_GROUP=dotenv-group\n")
    monkeypatch.setenv("FLEAD_CONSUMER_GROUP", "env-group")
    settings = Settings()
    assert settings.mongo_db == "from_dotenv"
    assert settings.consumer_group == "env-group"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("FLEAD_KAFKA_BOOTSTRAP_SERVERS", "no-port-here", "kafka_bootstrap_servers"),
        ("FLEAD_MONGO_URI", "http://127.0.0.1:27017", "mongo_uri"),
        ("FLEAD_TOPIC_READINGS_PARTITIONS", "zero", "topic_readings_partitions"),
    ],
)
def test_bad_configuration_names_the_field(monkeypatch, variable, value, field):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_readme_configuration_table_matches_the_settings():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", readme, re.S)
    assert block, "README.md lacks the generated configuration table"
    assert block.group(1).strip() == settings_markdown_table(), "regenerate with `flead config --markdown`"


def test_no_host_port_topic_or_collection_literals_outside_config():
    """Hosts, ports, topics and collections come from flead.config only."""
    defaults = Settings.model_construct()
    literals = {"127.0.0.1:", "localhost:", ":9092", ":27017", "mongodb://"}
    literals |= {
        getattr(defaults, n)
        for n in Settings.model_fields
        if n.startswith("topic_") and n not in ("topic_readings_partitions", "topic_replication_factor")
    }
    collections = [getattr(defaults, n) for n in Settings.model_fields if n.startswith("collection_")]
    collection_use = re.compile(
        r"(?:db|database)\[[\"']({})[\"']\]|get_collection\([\"']({})[\"']".format(
            "|".join(map(re.escape, collections)), "|".join(map(re.escape, collections))
        )
    )
    offenders = []
    for path in [
        *REPO.glob("flead/**/*.py"),
        *REPO.glob("flead_dagster/**/*.py"),
        *REPO.glob("services/**/*.py"),
    ]:
        if path.name == "config.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: {lit!r}" for lit in literals if lit in text]
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in collection_use.finditer(text)]
    assert offenders == []
