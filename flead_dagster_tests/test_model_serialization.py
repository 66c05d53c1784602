"""The shared model formats: bit-exact round trips, and clear errors for anything malformed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from flead.model import AnomalyModel, ModelConfig, OnlineDetector, QuantileThreshold, TrainConfig
from flead.model.serialization import MAGIC, pack, unpack

FEATURES = ("temperature", "humidity", "pressure")


def stream(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = np.stack([20 + 3 * np.sin(t / 50), 40 - 2 * np.sin(t / 50), 1000 + np.cos(t / 30)], axis=1)
    return values + rng.normal(0, 0.05, values.shape)


def trained_model(kind: str) -> AnomalyModel:
    config = ModelConfig(kind=kind, features=FEATURES, window=6, hidden=(10, 4), time_features=False)
    detector = OnlineDetector(config, train=TrainConfig(warmup=100))
    detector.process_many(stream(700))
    model = detector.model
    model.metadata = {"version": 3, "devices": ["mote-01"]}
    # Values a lossy format would break: signed zero, subnormals, the largest float32.
    weights = model.get_weights()
    first = next(iter(weights))
    weights[first].flat[:4] = np.array([-0.0, 1e-45, -3.4028235e38, 1.1754942e-38], np.float32)
    model.set_weights(weights)
    return model


def assert_same_model(a: AnomalyModel, b: AnomalyModel) -> None:
    assert a.config == b.config
    assert list(a.get_weights()) == list(b.get_weights())
    for name, value in a.get_weights().items():
        other = b.get_weights()[name]
        assert other.dtype == np.float32 and other.shape == value.shape
        np.testing.assert_array_equal(value.view(np.uint32), other.view(np.uint32))  # bit for bit
    assert a.normalizer.state_dict() == b.normalizer.state_dict()
    assert (a.n_samples_seen, a.metadata) == (b.n_samples_seen, b.metadata)


@pytest.mark.parametrize("kind", ["forecaster", "autoencoder"])
def test_binary_round_trip_is_bit_exact(kind: str) -> None:
    model = trained_model(kind)
    data = model.to_bytes()
    restored = AnomalyModel.from_bytes(data)
    assert_same_model(model, restored)
    assert restored.to_bytes() == data
    assert data.startswith(MAGIC)
    assert len(data) < 4 * model.network.size + 4_000  # raw float32 plus a small header


@pytest.mark.parametrize("kind", ["forecaster", "autoencoder"])
def test_json_round_trip_is_bit_exact(kind: str) -> None:
    model = trained_model(kind)
    document = json.loads(json.dumps(model.to_json_dict()))
    restored = AnomalyModel.from_json_dict(document)
    assert_same_model(model, restored)
    assert restored.to_json_dict() == document
    assert AnomalyModel.from_bytes(restored.to_bytes()).to_json_dict() == document  # same model, both forms


def test_header_describes_the_model() -> None:
    model = trained_model("autoencoder")
    header = model.to_json_dict()
    assert header["format"] == "flead-model" and header["format_version"] == 1
    assert header["features"] == list(FEATURES)
    assert header["architecture"]["kind"] == "autoencoder" and header["architecture"]["window"] == 6
    assert header["layers"][0] == {"name": "enc.0", "in": 18, "out": 10}
    assert [a["name"] for a in header["arrays"]] == list(model.get_weights())
    assert set(header["normalizer"]) == {"count", "mean", "m2", "min_std"}


def test_corrupt_binary_payloads_raise_clear_errors() -> None:
    data = trained_model("forecaster").to_bytes()
    header_length = struct.unpack_from("<I", data, len(MAGIC))[0]
    with pytest.raises(ValueError, match="magic"):
        AnomalyModel.from_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="too short"):
        AnomalyModel.from_bytes(data[:5])
    with pytest.raises(ValueError, match="truncated container: header"):
        AnomalyModel.from_bytes(data[: len(MAGIC) + 4 + header_length // 2])
    with pytest.raises(ValueError, match="payload truncated"):
        AnomalyModel.from_bytes(data[:-3])
    with pytest.raises(ValueError, match="trailing bytes"):
        AnomalyModel.from_bytes(data + b"\x00\x00\x00\x00")
    broken = bytearray(data)
    broken[len(MAGIC) + 4] = ord("[")  # the JSON header no longer parses
    with pytest.raises(ValueError, match="corrupt container header"):
        AnomalyModel.from_bytes(bytes(broken))


def repack(model: AnomalyModel, **changes) -> bytes:
    header = {k: v for k, v in model.to_json_dict().items() if k not in ("weights", "arrays", "dtype")}
    arrays = dict(model.network.params)
    arrays.update(changes.pop("arrays", {}))
    return pack({**header, **changes}, arrays)


def test_unknown_versions_formats_and_shapes_are_refused() -> None:
    model = trained_model("forecaster")
    assert AnomalyModel.from_bytes(repack(model)).to_bytes() == model.to_bytes()
    with pytest.raises(ValueError, match="unknown flead-model format_version 2"):
        AnomalyModel.from_bytes(repack(model, format_version=2))
    with pytest.raises(ValueError, match="expected format 'flead-model', got 'flead-detector'"):
        AnomalyModel.from_bytes(OnlineDetector(model=model).to_bytes())
    with pytest.raises(ValueError, match=r"'net.0.W' has shape \(6, 16\)"):
        AnomalyModel.from_bytes(repack(model, arrays={"net.0.W": np.zeros((6, 16), np.float32)}))
    with pytest.raises(ValueError, match="do not match the architecture"):
        AnomalyModel.from_bytes(
            repack(model, architecture={**model.to_json_dict()["architecture"], "window": 7})
        )
    with pytest.raises(ValueError, match="unknown architecture fields"):
        AnomalyModel.from_bytes(repack(model, architecture={"kind": "forecaster", "depth": 3}))
    with pytest.raises(ValueError, match="normaliser"):
        AnomalyModel.from_bytes(repack(model, normalizer={**model.normalizer.state_dict(), "mean": [1.0]}))


def test_corrupt_json_models_are_refused() -> None:
    document = trained_model("autoencoder").to_json_dict()
    weights = document["weights"]
    with pytest.raises(ValueError, match="format_version"):
        AnomalyModel.from_json_dict({**document, "format_version": "1"})
    with pytest.raises(ValueError, match=r"'enc.0.b' has shape \(9,\)"):
        AnomalyModel.from_json_dict({**document, "weights": {**weights, "enc.0.b": [0.0] * 9}})
    with pytest.raises(ValueError, match="not float32"):
        AnomalyModel.from_json_dict({**document, "weights": {**weights, "enc.0.b": [0.1] * 10}})
    with pytest.raises(ValueError, match="nested lists of numbers"):
        AnomalyModel.from_json_dict({**document, "weights": {**weights, "enc.0.b": ["x"] * 10}})
    missing = {k: v for k, v in weights.items() if k != "dec.1.W"}
    with pytest.raises(ValueError, match="do not match"):
        AnomalyModel.from_json_dict({**document, "weights": missing})


def test_pack_unpack_keep_order_shapes_and_little_endian_float32() -> None:
    arrays = {"b": np.arange(6, dtype=np.float64).reshape(2, 3), "a": np.array([1.5], np.float32)}
    data = pack({"format": "x", "format_version": 1}, arrays)
    assert data.endswith(np.arange(6, dtype="<f4").tobytes() + np.array([1.5], "<f4").tobytes())
    header, out = unpack(data, "x", (1,))
    assert list(out) == ["b", "a"] and out["b"].shape == (2, 3) and out["b"].dtype == np.float32
    assert header["arrays"] == [{"name": "b", "shape": [2, 3]}, {"name": "a", "shape": [1]}]
    out["b"][0, 0] = 9.0  # writable copies


def test_detector_checkpoint_resumes_exactly() -> None:
    config = ModelConfig(features=FEATURES, window=6, hidden=(10, 4), time_features=False)
    data = stream(1_500, seed=1)
    data[900, 0] += 50.0
    data[1_200:1_210, 1] = np.nan
    original = OnlineDetector(config, train=TrainConfig(warmup=200), threshold=QuantileThreshold(warmup=100))
    original.process_many(data[:830])  # not a multiple of the batch size: context and runs carry over
    restored = OnlineDetector.from_bytes(original.to_bytes())
    assert restored.to_bytes() == original.to_bytes()
    a, b = original.process_many(data[830:]), restored.process_many(data[830:])
    assert a.equals(b)
    assert a["is_anomaly"].any()
    for name, value in original.get_weights().items():
        np.testing.assert_array_equal(value, restored.get_weights()[name])
    with pytest.raises(ValueError, match="expected format 'flead-detector'"):
        OnlineDetector.from_bytes(original.model.to_bytes())


def test_a_detector_checkpointed_mid_calibration_resumes_exactly() -> None:
    """The default decision layer: calibration buffers, smoothing and stuck-value runs all carry over."""
    config = ModelConfig(features=FEATURES, window=6, hidden=(10, 4), time_features=False)
    data = stream(2_400, seed=2)
    data[2_000:2_100, 0] += 50.0
    data[2_200:2_300, 1] = data[2_200, 1]  # stuck
    original = OnlineDetector(config, train=TrainConfig(warmup=200, calibration=1_000))
    original.process_many(data[:830])  # warm, calibrating: the buffer holds float64 scores
    restored = OnlineDetector.from_bytes(original.to_bytes())
    assert restored.to_bytes() == original.to_bytes()
    a, b = original.process_many(data[830:]), restored.process_many(data[830:])
    assert a.equals(b)
    assert a["is_anomaly"][2_000 - 830 :].any() and original.threshold.source == "own"
