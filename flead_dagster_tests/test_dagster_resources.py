"""The ``flead`` resource: the settings every asset, sensor and schedule reads, and how they are bound."""

import json

from flead.config import Settings
from flead_dagster.definitions import defs
from flead_dagster.defs.resources import FleadResource, default_resources


def test_the_code_locations_flead_reads_the_environment_at_each_call(monkeypatch):
    flead = defs.resources["flead"]
    assert isinstance(flead, FleadResource) and flead.overrides == {}
    monkeypatch.setenv("FLEAD_PENDING_UPDATES_TRIGGER", "7")
    assert flead.settings().pending_updates_trigger == 7
    monkeypatch.setenv("FLEAD_PENDING_UPDATES_TRIGGER", "9")
    assert flead.settings().pending_updates_trigger == 9


def test_a_pinned_flead_keeps_its_settings_and_reads_secrets_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_API_ADMIN_KEY", "s3cret-admin")
    settings = Settings(home=tmp_path / "home", mongo_db="pinned", pending_updates_trigger=4)
    flead = default_resources(settings)["flead"]
    assert "api_admin_key" not in flead.overrides and "s3cret-admin" not in json.dumps(flead.overrides)
    monkeypatch.setenv("FLEAD_MONGO_DB", "elsewhere")
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path / "other"))
    pinned = flead.settings()
    assert pinned.model_dump() == settings.model_dump()
    assert pinned.lake_dir == tmp_path / "home" / "lake" and pinned.mongo_db == "pinned"
    assert flead.api_client(pinned).token == "s3cret-admin"


def test_overrides_steer_one_setting_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_SUPERVISE_API", "true")
    monkeypatch.setenv("FLEAD_MONGO_DB", "from_env")
    settings = FleadResource(overrides={"supervise_api": False, "home": str(tmp_path)}).settings()
    assert settings.supervise_api is False and settings.mongo_db == "from_env"
    assert settings.reports_dir == tmp_path / "reports"
