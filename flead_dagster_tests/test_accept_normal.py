"""An operator accepts a device's new normal through the API: a lasting level shift keeps alarming
(the reference is frozen), `POST /api/devices/{id}/accept-normal` with an admin token is applied by
the trainer that owns the device, survives a restart from its checkpoint, and after the
recalibration readings the device stops alarming on its new level while an unacknowledged twin
keeps alarming. Real trainer processes, broker, MongoDB and API over HTTP."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from flead.config import Settings
from flead_dagster_tests.helpers.api import api_harness
from flead_dagster_tests.helpers.trainer import (
    STEP,
    T0,
    Trainer,
    create_topics,
    device_stats,
    documents,
    isolated_env,
    offsets_total,
    paced_replay,
    settings_for,
    stationary,
    wait_until,
)

TRAINER_ARGS = ("--flush-idle", "3600", "--freeze-reference")  # whole chunks only: deterministic
SHIFT_AT, ACK_AT, N = 1500, 2304, 4096  # calibrated by reading 1,200; chunks of 64
ACKED, TWIN = "lvl-00", "lvl-01"


def shifted_fleet() -> pl.DataFrame:
    """Steady devices; two read 3 degrees (10 noise stds) higher from reading SHIFT_AT on, for good."""
    frame = stationary([ACKED, TWIN, "steady-00"], N, seed=5)
    index = pl.int_range(pl.len()).over("device_id")
    shifted = (index >= SHIFT_AT) & pl.col("device_id").is_in([ACKED, TWIN])
    return frame.with_columns(
        pl.when(shifted)
        .then(pl.col("temperature") + 3.0)
        .otherwise(pl.col("temperature"))
        .alias("temperature")
    )


def alarm_rate(settings: Settings, device: str, first: int, stop: int) -> float:
    alarms = documents(
        settings,
        settings.collection_anomalies,
        {"device_id": device, "ts": {"$gte": T0 + first * STEP, "$lt": T0 + stop * STEP}},
    )
    return len(alarms) / (stop - first)


def replayed(trainer: Trainer, settings: Settings, part: pl.DataFrame, total: int) -> None:
    paced_replay(settings, part, seconds=2).join()
    trainer.wait_for(lambda h: offsets_total(h, "checkpointed_offsets") == total, 90, f"{total} checkpointed")


def test_an_admin_accepts_a_new_normal_and_the_trainer_recalibrates(services_env, tmp_path):
    env = isolated_env(services_env)
    settings = settings_for(env)
    create_topics(settings)
    frame = shifted_fleet()
    index = pl.int_range(pl.len()).over("device_id")
    before, after = frame.filter(index < ACK_AT), frame.filter(index >= ACK_AT)
    trainer = Trainer(env, tmp_path, *TRAINER_ARGS, name="t1")
    trainer.wait_for(lambda h: len(h["partitions"]) == 4, 60, "partitions assigned")
    replayed(trainer, settings, before, before.height)
    for device in (ACKED, TWIN):  # the shift keeps alarming: the frozen reference cannot follow it
        assert alarm_rate(settings, device, ACK_AT - 500, ACK_AT) > 0.9
    assert alarm_rate(settings, "steady-00", ACK_AT - 500, ACK_AT) < 0.02

    with api_harness(mongo_db=settings.mongo_db) as api:  # drops the database when it closes
        path = f"/api/devices/{ACKED}/accept-normal"
        body = {"request_id": "ticket-42", "reason": "sensor moved next to the heater"}
        assert api.http.post(path, json=body).status_code == 401
        for role, device in (("trainer", None), ("device", ACKED)):
            refused = api.http.post(path, json=body, headers=api.auth(api.token(role, device)))
            assert refused.status_code == 403, refused.text
        for bad in ("-starts-with-a-dash", "x" * 65, "sp ace"):
            assert (
                api.http.post(f"/api/devices/{bad}/accept-normal", json=body, headers=api.admin).status_code
                == 422
            )
            assert api.http.get(f"/api/devices/{bad}/accept-normal").status_code == 422
        bad_body = api.http.post(path, json={**body, "unknown": 1}, headers=api.admin)
        assert bad_body.status_code == 422
        assert (
            api.http.post("/api/devices/never-seen/accept-normal", json=body, headers=api.admin).status_code
            == 404
        )

        created = api.http.post(path, json=body, headers=api.admin)
        assert created.status_code == 202, created.text
        ack = created.json()
        assert ack["id"] == f"{ACKED}/ticket-42" and ack["applied"] is False
        assert ack["requested_by"] == "admin:settings-admin-key" and ack["reason"] == body["reason"]
        again = api.http.post(path, json={"request_id": "ticket-42"}, headers=api.admin)
        assert again.status_code == 200 and again.json()["requested_at"] == ack["requested_at"]  # idempotent

        def applied() -> dict | None:
            items = api.http.get(path).json()["items"]
            return items[0] if len(items) == 1 and items[0]["applied"] else None

        done = wait_until(applied, 30, "the trainer applied the acknowledgement")
        assert done["applied_partition"] in range(4) and done["applied_after_readings"] == ACK_AT
        assert done["applied_offset"] is not None and done["applied_by"].startswith("stream-trainer:")
        assert datetime.fromisoformat(done["applied_at"]) >= datetime.fromisoformat(done["requested_at"])
        stats = device_stats(settings)
        assert stats[ACKED]["recalibrating"] is True and stats[TWIN]["recalibrating"] is False
        served = {d["device_id"]: d["stats"] for d in api.http.get("/api/devices").json()["items"]}
        assert served[ACKED]["recalibrating"] is True and served[ACKED]["threshold_source"] == "own"

        # the recalibration survives a restart from the checkpoint
        assert trainer.stop() == 0, trainer.tail()
        trainer = Trainer(env, tmp_path, *TRAINER_ARGS, name="t2")
        trainer.wait_for(lambda h: len(h["partitions"]) == 4, 60, "partitions assigned again")
        replayed(trainer, settings, after, frame.height)
        assert trainer.health()["counters"]["normal_acks_applied"] == 0  # nothing left pending
        assert trainer.stop() == 0, trainer.tail()

        assert alarm_rate(settings, ACKED, N - 1000, N) < 0.02  # the new level is normal now
        assert alarm_rate(settings, TWIN, N - 1000, N) > 0.9  # unacknowledged: still alarming
        stats = device_stats(settings)
        assert stats[ACKED]["recalibrating"] is False and stats[ACKED]["threshold_source"] == "own"
        acks = documents(settings, settings.collection_normal_acks)
        assert [(a["_id"], a["applied"]) for a in acks] == [(f"{ACKED}/ticket-42", True)]
