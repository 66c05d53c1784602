"""Session fixtures: the real embedded Kafka broker and MongoDB server on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from flead.config import Settings
from flead.local.services import LocalServices
from flead_dagster_tests.helpers.services import service_env


@pytest.fixture(scope="session")
def services_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the shared local services once per test session and export their settings."""
    env = service_env(tmp_path_factory.mktemp("flead-home"))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    services = LocalServices(Settings())
    try:
        services.up()
        yield env
    finally:
        services.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def settings(services_env: dict[str, str]) -> Settings:
    return Settings()
