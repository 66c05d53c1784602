"""The settings for secured Kafka and MongoDB: validated together, wired into the clients, masked."""

from __future__ import annotations

import os

import certifi
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from typer.testing import CliRunner

from flead.bus.clients import _common
from flead.config import Settings, settings_rows
from flead.storage.mongo import make_mongo_client, mongo_client_options
from flead_cli import app

SASL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "flead",
    "kafka_sasl_password": "kafka-s3cret",
}


@pytest.fixture(autouse=True)
def no_flead_environment(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("FLEAD_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env file


def make(**fields) -> Settings:
    return Settings(_env_file=None, **fields)


def test_default_kafka_clients_stay_plaintext_without_credentials():
    options = _common(make())
    assert options["security_protocol"] == "PLAINTEXT"
    assert not {k for k in options if k.startswith(("sasl_", "ssl_"))}


def test_sasl_ssl_settings_reach_the_kafka_clients(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    options = _common(make(**SASL, kafka_ssl_cafile=ca, kafka_ssl_certfile=cert, kafka_ssl_keyfile=key))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("flead", "kafka-s3cret")
    assert (options["ssl_cafile"], options["ssl_certfile"], options["ssl_keyfile"]) == (
        str(ca),
        str(cert),
        str(key),
    )


def test_sasl_plaintext_sends_no_tls_options():
    options = _common(make(**{**SASL, "kafka_security_protocol": "SASL_PLAINTEXT"}))
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert not {k for k in options if k.startswith("ssl_")}


def test_every_kafka_option_is_one_kafka_python_knows(tmp_path):
    """kafka-python rejects unknown configs only when a client is built, i.e. against a broker."""
    options = _common(make(**SASL, kafka_ssl_cafile=tmp_path / "ca.pem"))
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(options) <= set(client.DEFAULT_CONFIG), client.__name__


def test_security_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLEAD_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_PASSWORD", "p")
    monkeypatch.setenv("FLEAD_MONGO_TLS", "true")
    settings = Settings()
    assert settings.kafka_sasl_password.get_secret_value() == "p"
    assert settings.mongo_tls is True
    assert "'p'" not in repr(settings)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**SASL, "kafka_sasl_password": None}, "needs FLEAD_KAFKA_SASL_PASSWORD"),
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "needs FLEAD_KAFKA_SASL_MECHANISM, FLEAD_KAFKA_SASL_USERNAME, FLEAD_KAFKA_SASL_PASSWORD",
        ),
        ({**SASL, "kafka_sasl_username": ""}, "needs FLEAD_KAFKA_SASL_USERNAME"),
        (
            {"kafka_sasl_mechanism": "PLAIN"},
            "FLEAD_KAFKA_SASL_MECHANISM set but .*=PLAINTEXT does not use SASL",
        ),
        ({"kafka_ssl_cafile": "/ca.pem"}, "FLEAD_KAFKA_SSL_CAFILE set but .*=PLAINTEXT does not use TLS"),
        (
            {**SASL, "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_ssl_cafile": "/ca.pem"},
            "does not use TLS",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k.pem"},
            "FLEAD_KAFKA_SSL_KEYFILE needs FLEAD_KAFKA_SSL_CERTFILE",
        ),
        ({"mongo_tls_ca_file": "/ca.pem"}, "FLEAD_MONGO_TLS_CA_FILE set but FLEAD_MONGO_TLS is false"),
        ({"mongo_username": "flead"}, "FLEAD_MONGO_USERNAME and FLEAD_MONGO_PASSWORD go together"),
        ({"mongo_password": "p"}, "FLEAD_MONGO_USERNAME and FLEAD_MONGO_PASSWORD go together"),
        (
            {"mongo_uri": "mongodb://a:b@db:27017/", "mongo_username": "flead", "mongo_password": "p"},
            "credentials are given twice",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({**SASL, "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_incomplete_or_contradictory_security_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        make(**fields)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as info:
        make(kafka_sasl_username="u", mongo_username="m")
    assert "does not use SASL" in str(info.value) and "go together" in str(info.value)


def test_mongo_defaults_pass_no_tls_or_credentials_so_the_uri_decides():
    options = mongo_client_options(make())
    assert not {"tls", "tlsCAFile", "username", "password"} & set(options)
    client = make_mongo_client(make(mongo_uri="mongodb://db:27017/?tls=true"), connect=False)
    try:
        assert client.options.pool_options._ssl_context is not None  # ?tls=true was not overridden
    finally:
        client.close()


def test_mongo_tls_and_credentials_reach_pymongo():
    settings = make(
        mongo_uri="mongodb://db-1:27017,db-2:27017/?replicaSet=rs0&authSource=flead",
        mongo_tls=True,
        mongo_tls_ca_file=certifi.where(),
        mongo_username="flead",
        mongo_password="mongo-s3cret",
    )
    options = mongo_client_options(settings)
    assert options["tls"] is True and options["tlsCAFile"] == certifi.where()
    assert (options["username"], options["password"]) == ("flead", "mongo-s3cret")
    client = make_mongo_client(settings, connect=False)
    try:
        assert client.options.pool_options._ssl_context is not None
        credentials = client.options.pool_options._credentials
        assert (credentials.username, credentials.password, credentials.source) == (
            "flead",
            "mongo-s3cret",
            "flead",
        )
        assert client.options.replica_set_name == "rs0"
    finally:
        client.close()


def test_secrets_are_masked_in_settings_rows_and_flead_config(monkeypatch):
    secrets = {
        "FLEAD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FLEAD_KAFKA_SASL_MECHANISM": "PLAIN",
        "FLEAD_KAFKA_SASL_USERNAME": "kafka-user",
        "FLEAD_KAFKA_SASL_PASSWORD": "kafka-pw-123",
        "FLEAD_MONGO_USERNAME": "mongo-user",
        "FLEAD_MONGO_PASSWORD": "mongo-pw-456",
        "FLEAD_API_ADMIN_KEY": "admin-key-789",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    rows = {env: value for env, value, _ in settings_rows(Settings())}
    for key in ("FLEAD_KAFKA_SASL_PASSWORD", "FLEAD_MONGO_PASSWORD", "FLEAD_API_ADMIN_KEY"):
        assert rows[key] == "********"
    assert rows["FLEAD_KAFKA_SASL_USERNAME"] == "kafka-user"  # a user name is not a secret

    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "kafka-user" in result.output and "********" in result.output
    for secret in ("kafka-pw-123", "mongo-pw-456", "admin-key-789"):
        assert secret not in result.output


def test_a_password_written_into_the_mongo_uri_is_masked_too(monkeypatch):
    monkeypatch.setenv("FLEAD_MONGO_URI", "mongodb://flead:uri-pw-000@db:27017/?authSource=flead")
    rows = {env: value for env, value, _ in settings_rows(Settings())}
    assert rows["FLEAD_MONGO_URI"] == "mongodb://flead:********@db:27017/?authSource=flead"
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0 and "uri-pw-000" not in result.output
