"""Physical limits flag readings no model is allowed to learn away, in the trainer too."""

from __future__ import annotations

import numpy as np

from flead.federated.device import DeviceClient
from flead.model.config import ModelConfig, TrainConfig
from flead.model.detector import OnlineDetector
from flead.model.rules import out_of_range
from flead.schema import MEASUREMENTS
from services.stream_trainer.devices import DeviceSlot, PendingReadings, reading_dtype


def test_out_of_range_uses_the_known_limits_only():
    values = np.array([[21.0, 40.0, 100.0, 2.7], [122.0, 40.0, 100.0, 2.0], [np.nan, -4.0, 5.0, 2.6]])
    assert out_of_range(values, MEASUREMENTS).tolist() == [False, True, True]
    assert not out_of_range(values[:, :1] * 10, ("pressure",)).any()  # no limits known for it


def test_the_trainer_flags_impossible_readings_even_while_the_model_warms_up():
    config = ModelConfig(window=4, hidden=(8, 2))
    client = DeviceClient("mote-01", OnlineDetector(config, train=TrainConfig(warmup=10_000), seed=0))
    slot = DeviceSlot("mote-01", 0, client, PendingReadings(reading_dtype(4)))
    rows = np.zeros(64, reading_dtype(4))
    rows["ts"] = np.datetime64("2004-03-20T00:00:00", "us") + np.arange(64) * np.timedelta64(31, "s")
    rows["values"] = [21.0, 40.0, 100.0, 2.7]
    rows["values"][40:, 0] = 122.153  # the dying battery's saturated temperature
    chunk = slot.score(rows)
    assert chunk.out_of_range[40:].all() and not chunk.out_of_range[:40].any()
    assert (
        chunk.is_anomaly[40:].all() and not chunk.is_anomaly[:40].any()
    )  # the model itself is not judging yet
    assert slot.anomalies == 24
