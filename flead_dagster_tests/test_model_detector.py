"""The online detector: prequential scoring, judging and learning on device streams."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flead.datasets.inject import InjectionConfig, inject_anomalies
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.evaluation.metrics import average_precision
from flead.model import ModelConfig, OnlineDetector, QuantileThreshold, SpotThreshold, TrainConfig

ABC = ("a", "b", "c")
SMALL = ModelConfig(features=ABC, time_features=False, window=8, hidden=(32, 4))


def stream(n: int, seed: int = 0) -> np.ndarray:
    """Three smooth, correlated, noisy features: (n, 3)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 40), np.cos(t / 40), np.sin(t / 15)], 1) + rng.normal(0, 0.05, (n, 3))


def with_bursts(values: np.ndarray, start: int, every: int, length: int, size: float = 4.0):
    values, bad = values.copy(), np.zeros(len(values), bool)
    for s in range(start, len(values) - length, every):
        bad[s : s + length] = True
    values[bad, 0] += size
    return values, bad


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """Two synthetic motes over five days, in the real raw format, with injected spikes and noise bursts."""
    fleet = generate_fleet(
        tmp_path_factory.mktemp("fleet"), n_devices=2, days=5, seed=3, failing_fraction=0.0
    )
    rows = parse_files(fleet.paths, mote_ids=range(1, 3)).rows
    config = InjectionConfig(
        spike_rate=4.0,
        stuck_at_rate=0.0,
        drift_rate=0.0,
        noise_burst_rate=1.0,
        dropout_rate=0.0,
        bias_rate=0.0,
        noise_increase_rate=0.0,
    )
    return inject_anomalies(rows, config, seed=1).readings.sort("device_id", "ts")


def test_injected_anomalies_score_far_above_normal_readings(labelled: pl.DataFrame) -> None:
    parts = []
    for _, device in labelled.group_by("device_id", maintain_order=True):
        # The default model and features, calibrated online on ~17 hours of the device's readings.
        detector = OnlineDetector(train=TrainConfig(warmup=1_000, calibration=2_000))
        result = detector.process_many(device)
        assert result.height == device.height
        parts.append(device.hstack(result))
    judged = pl.concat(parts).filter(pl.col("threshold").is_finite())
    normal = judged.filter(pl.col("label") == 0)["score"].mean()
    assert judged.filter(pl.col("anomaly_type") == "spike")["score"].mean() > 8 * normal
    assert judged.filter(pl.col("anomaly_type") == "noise_burst")["score"].mean() > 3 * normal
    label_rate = judged["label"].mean()
    assert average_precision(judged["score"].to_numpy(), judged["label"].to_numpy()) > 4 * label_rate
    # Calibrated on its first readings, anomalies included (the fence keeps them out of the fit):
    # most alarms are real anomalies, and normal readings rarely alarm.
    alarms = judged.filter(pl.col("is_anomaly"))
    assert alarms.height > 10 and alarms["label"].mean() > 0.5
    assert judged.filter(pl.col("label") == 0)["is_anomaly"].mean() < 0.01


def test_warm_up_scores_every_reading_but_never_alarms() -> None:
    values = stream(3_000)
    values[::50, 1] += 100.0  # wild values everywhere, warm-up included
    detector = OnlineDetector(SMALL, train=TrainConfig(warmup=1_000), threshold=QuantileThreshold(warmup=500))
    first = detector.process_many(values[:5])  # a stream's very first readings: padded windows
    rest = detector.process_many(values[5:])
    out = pl.concat([first, rest])
    assert out.height == len(values)
    assert np.isfinite(out["score"].to_numpy()).all() and (out["score"] >= 0).all()
    warm = out.head(1_000)
    assert warm["threshold"].is_infinite().all() and not warm["is_anomaly"].any()
    assert out["is_anomaly"][1_600:].sum() > 0  # once warmed up (model, then threshold), it judges


def test_missing_values_give_finite_scores_and_no_alarm_when_nothing_is_present() -> None:
    rng = np.random.default_rng(1)
    values = stream(4_000)
    values[rng.random(values.shape) < 0.15] = np.nan
    values[::97] = np.nan  # readings with no value at all
    values[5, 2] = np.inf
    detector = OnlineDetector(SMALL, train=TrainConfig(warmup=500), threshold=QuantileThreshold(warmup=200))
    out = detector.process_many(values)
    scores = out["score"].to_numpy()
    assert np.isfinite(scores).all()
    assert (scores[::97] == 0).all() and not out["is_anomaly"].to_numpy()[::97].any()
    assert np.isfinite(detector.model.network.flat).all()
    assert (
        np.isfinite(detector.model.normalizer.mean).all() and (detector.model.normalizer.count < 4_000).all()
    )
    assert np.isfinite(detector.score_many(values[:100])).all()


@pytest.mark.parametrize("protection", ["downweight", "skip"])
def test_anomalies_judged_as_such_do_not_poison_training(protection: str) -> None:
    """A stream where 10 % of the readings are spikes, learned with and without protection: the
    protected model keeps reconstructing normal readings well and keeps spikes far above them."""
    dirty, bad = with_bursts(stream(20_000), start=3_000, every=10, length=1)
    held_out, held_bad = with_bursts(stream(3_000, seed=1), start=100, every=300, length=1)
    results = {}
    for how in (protection, "learn"):
        detector = OnlineDetector(
            SMALL,
            train=TrainConfig(anomaly_learning=how, warmup=1_000),
            threshold=SpotThreshold(n_init=1_000),
        )
        out = detector.process_many(dirty)
        assert out["is_anomaly"].to_numpy()[bad].mean() > 0.95
        scores = detector.score_many(held_out)
        results[how] = (scores[~held_bad].mean(), scores[held_bad].mean() / scores[~held_bad].mean())
    (normal, ratio), (poisoned_normal, poisoned_ratio) = results[protection], results["learn"]
    assert normal < 0.85 * poisoned_normal
    assert ratio > 1.4 * poisoned_ratio


def test_readings_after_a_spike_are_judged_without_it() -> None:
    values = stream(8_000)
    spikes = np.arange(5_000, 8_000, 97)
    values[spikes, 0] += 6.0
    after = np.concatenate([np.arange(s + 1, s + 9) for s in spikes])
    rates = {}
    for max_masked_run in (8, 0):
        train = TrainConfig(warmup=2_000, max_masked_run=max_masked_run)
        out = OnlineDetector(SMALL, train=train, threshold=QuantileThreshold(q=0.99)).process_many(values)
        flags = out["is_anomaly"].to_numpy()
        assert flags[spikes].all()
        rates[max_masked_run] = flags[after].mean()
    assert rates[8] <= 0.01 and rates[8] < rates[0]


def test_call_sizes_do_not_change_the_results() -> None:
    values = stream(1_000)
    values[700, 0] += 9.0
    train = TrainConfig(warmup=300, batch_size=50)
    whole = OnlineDetector(SMALL, train=train, threshold=QuantileThreshold(warmup=100)).process_many(values)
    split = OnlineDetector(SMALL, train=train, threshold=QuantileThreshold(warmup=100))
    parts = [split.process_many(values[a:b]) for a, b in [(0, 50), (50, 400), (400, 450), (450, 1_000)]]
    assert whole.equals(pl.concat(parts))
    assert whole["is_anomaly"][700]


def test_same_seed_same_results_and_frames_equal_arrays() -> None:
    start = pl.datetime(2004, 3, 1, time_zone="UTC")
    ts = pl.datetime_range(start, start + pl.duration(seconds=31 * 599), "31s", eager=True)
    frame = pl.DataFrame({"ts": ts, **{f: stream(600)[:, i] for i, f in enumerate(ABC)}})
    config = ModelConfig(features=ABC, window=8, hidden=(16, 4))  # with the time of day
    a = OnlineDetector(config, seed=7).process_many(frame)
    b = OnlineDetector(config, seed=7).process_many(frame.select("c", "ts", "b", "a"))  # any column order
    c = OnlineDetector(config, seed=7).process_many(frame.select(ABC).to_numpy(), ts=frame["ts"].to_numpy())
    d = OnlineDetector(config, seed=8).process_many(frame)
    assert a.equals(b) and a.equals(c)
    assert not a["score"].equals(d["score"])


def test_custom_features_and_clear_errors_for_wrong_batches() -> None:
    detector = OnlineDetector(ModelConfig(features=("x", "y"), time_features=False, window=4, hidden=(8, 2)))
    out = detector.process_many(
        pl.DataFrame({"y": [1.0, 2.0, None], "x": [3, 4, 5], "other": ["a", "b", "c"]})
    )
    assert out.columns == ["score", "threshold", "severity", "is_anomaly"] and out.height == 3
    with pytest.raises(ValueError, match=r"lacks the model's feature columns \['y'\]"):
        detector.process_many(pl.DataFrame({"x": [1.0]}))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        detector.score_many(np.zeros((4, 3)))
    timed = OnlineDetector(ModelConfig(features=("x",), window=4, hidden=(8, 2)))
    with pytest.raises(ValueError, match="needs a 'ts' column"):
        timed.learn_many(pl.DataFrame({"x": [1.0]}))
    with pytest.raises(ValueError, match="pass ts"):
        timed.learn_many(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="proximal_mu needs an anchor"):
        detector.learn_many(np.zeros((2, 2)), proximal_mu=0.1)


def test_sample_counter_and_excluded_readings() -> None:
    detector = OnlineDetector(SMALL)
    values = stream(300)
    values[100] = np.nan
    exclude = np.zeros(300, bool)
    exclude[:50] = True
    detector.learn_many(values, exclude=exclude)
    assert detector.n_samples_seen == 300 - 50 - 1  # neither excluded nor empty readings count
    detector.reset_sample_counter()
    assert detector.n_samples_seen == 0
    detector.process_many(values)
    assert detector.n_samples_seen == 299


def test_fedprox_keeps_local_weights_near_the_anchor() -> None:
    values = stream(3_000)
    anchor = OnlineDetector(SMALL, seed=1).get_weights()
    drift = {}
    for mu in (0.0, 1.0):
        detector = OnlineDetector(SMALL, seed=1)
        detector.learn_many(values, proximal_mu=mu, anchor=anchor)
        moved = detector.model.network.flat - detector.model.network.flatten(anchor)
        drift[mu] = float(np.linalg.norm(moved))
    assert drift[1.0] < 0.5 * drift[0.0]


def test_adopting_global_weights_keeps_the_device_state(tmp_path: Path) -> None:
    local = OnlineDetector(SMALL, train=TrainConfig(warmup=200), threshold=QuantileThreshold(warmup=100))
    local.process_many(stream(1_000))
    global_weights = OnlineDetector(SMALL, seed=42).get_weights()
    normalizer, threshold = local.model.normalizer.state_dict(), local.threshold.state_dict()
    context = local.context.copy()
    local.set_weights(global_weights)
    for name, value in global_weights.items():
        np.testing.assert_array_equal(local.get_weights()[name], value)
    assert local.model.normalizer.state_dict() == normalizer
    assert local.threshold.state_dict() == threshold
    np.testing.assert_array_equal(local.context, context)
    local.process_many(stream(500, seed=2))  # and keeps fine-tuning locally
    assert any(not np.array_equal(v, global_weights[k]) for k, v in local.get_weights().items())


def test_a_lasting_fault_alarms_for_its_whole_duration_and_a_new_device_borrows_the_fleet() -> None:
    config = SMALL
    healthy = stream(3_000, seed=4)
    frozen = TrainConfig(warmup=1_000, calibration=800, freeze_reference=True)
    detector = OnlineDetector(config, train=frozen)
    detector.process_many(healthy[:2_000])
    # Unjudged until its own calibration (warm-up + calibration readings, cut in batches of 64).
    assert detector.threshold.source == "own" and 1_800 <= detector.readings_unjudged <= 1_864
    broken = healthy[2_000:].copy()
    broken[:, 0] += 3.0 * healthy[:2_000, 0].std()  # a bias that lasts 1,000 readings
    out = detector.process_many(broken)
    assert out["is_anomaly"].mean() > 0.6  # not learned away, not capped by a budget

    newcomer = OnlineDetector(config, train=TrainConfig(warmup=1_000, calibration=800))
    newcomer.set_weights(detector.get_weights())
    newcomer.borrow(*detector.calibration)
    assert newcomer.threshold.source == "fleet"
    first = newcomer.process_many(healthy[:300])
    assert np.isfinite(first["threshold"].to_numpy()).all() and newcomer.readings_unjudged == 0


@pytest.mark.parametrize("kind", ["autoencoder", "forecaster"])
def test_inputs_feed_the_network_but_are_never_scored(kind: str) -> None:
    """A command input: in the network's window and the checkpoint, never in the output or the score."""
    rng = np.random.default_rng(5)
    n = 1_200
    command = (np.arange(n) // 300 % 2).astype(float)
    value = 3.0 * command + rng.normal(0, 0.05, n)
    config = ModelConfig(kind=kind, features=("value",), inputs=("cmd",), time_features=False, window=8)
    assert config.columns == ("value", "cmd") and config.input_size == 16
    assert config.output_size == (1 if kind == "forecaster" else 8)
    detector = OnlineDetector(config, train=TrainConfig(warmup=200, calibration=500))
    out = detector.process_many(pl.DataFrame({"value": value, "cmd": command}))
    assert np.isfinite(out["score"].to_numpy()).all()
    # Nothing scored is present: the score is 0 whatever the input does.
    silent = detector.score_many(pl.DataFrame({"value": [np.nan] * 4, "cmd": [1e6, -1e6, 0.0, 5.0]}))
    assert (silent == 0).all()
    restored = OnlineDetector.from_bytes(detector.to_bytes())
    assert restored.columns == ("value", "cmd") and restored.to_bytes() == detector.to_bytes()
    with pytest.raises(ValueError, match="cmd"):
        restored.process_many(pl.DataFrame({"value": [1.0]}))
    with pytest.raises(ValueError, match="inputs"):
        ModelConfig(features=("value",), inputs=("value",))


def test_a_stuck_sensor_is_flagged_and_a_feature_that_often_repeats_itself_needs_longer_runs() -> None:
    import doctest

    import flead.model.stuck as stuck_module

    assert doctest.testmod(stuck_module).failed == 0
    values = stream(3_000, seed=6)
    values[:, 2] = np.round(values[:, 2])  # c repeats itself for stretches of 10-20 readings
    detector = OnlineDetector(SMALL, train=TrainConfig(warmup=500, calibration=1_000))
    detector.process_many(values[:2_000])
    assert detector.stuck.windows[0] == 10 and detector.stuck.windows[2] >= 40
    broken = values[2_000:].copy()
    broken[100:400, 0] = broken[100, 0]  # a stops updating for 300 readings
    flags = detector.process_many(broken)["is_anomaly"].to_numpy()
    assert flags[111:400].all()  # flagged from its 11th repeat to the end
    restored = OnlineDetector.from_bytes(detector.to_bytes())
    assert restored.to_bytes() == detector.to_bytes()


def test_the_first_reading_after_a_silence_is_flagged_when_the_device_never_went_that_quiet() -> None:
    import doctest

    import flead.model.gaps as gaps_module

    assert doctest.testmod(gaps_module).failed == 0
    n = 3_000
    ts = np.datetime64("2004-03-01T00:00:00", "us") + np.arange(n) * np.timedelta64(31, "s")
    ts[2_500:] += np.timedelta64(40, "m")  # a 40-minute dropout before reading 2,500
    values = stream(n, seed=7)
    detector = OnlineDetector(SMALL, train=TrainConfig(warmup=500, calibration=1_000))
    out = detector.process_many(values, ts=ts)
    assert detector.gaps.window_s == 62.0  # twice the usual gap: normal gaps never reach it
    assert out["is_anomaly"][2_500] and out["severity"][2_500] > 30
    restored = OnlineDetector.from_bytes(detector.to_bytes())
    assert restored.to_bytes() == detector.to_bytes()


def test_a_channel_constant_while_it_calibrates_alarms_on_a_change_not_on_rounding() -> None:
    config = ModelConfig(features=("value",), time_features=False, window=8, hidden=(16, 4))
    detector = OnlineDetector(config, train=TrainConfig(warmup=0))
    constant = np.full((2_000, 1), 0.999)
    detector.process_many(constant)
    detector.calibrate(constant)
    assert detector.threshold.value >= 0.5  # an error of one resolution step scores 1
    same = detector.process_many(constant[:500] + np.random.default_rng(0).normal(0, 1e-9, (500, 1)))
    assert not same["is_anomaly"].any()
    jump = constant[:100].copy()
    jump[50] = -1.0
    assert detector.process_many(jump)["is_anomaly"].to_numpy()[50]


def test_an_autoencoder_judges_a_flagged_reading_by_its_reconstruction_not_its_jump() -> None:
    """The second pass hides a flagged reading from the windows after it, not from its own window."""
    train = TrainConfig(warmup=0, stuck_check=False, subspace_check=False)
    detector = OnlineDetector(SMALL, train=train)
    values = stream(2_064, seed=9)
    detector.process_many(values[:2_000])
    test = values[2_000:].copy()  # one batch: the same normaliser and context for every pass
    test[30, 0] += 1.0
    unjudged = detector.score_many(test)  # no threshold yet: nothing flagged, one pass
    k = int(np.argmax(unjudged))
    assert k == 30
    detector.threshold.fitted = 0.99 * unjudged[k]  # only reading k over it
    detector.sustained.fitted = 1e9
    judged = detector.process_many(test, learn=False)
    assert np.flatnonzero(judged["is_anomaly"].to_numpy()).tolist() == [k]
    np.testing.assert_allclose(judged["score"].to_numpy()[: k + 1], unjudged[: k + 1], rtol=1e-5)


def test_the_learn_one_docstring_example_runs() -> None:
    """The River-style example in `OnlineDetector.learn_one` (the project runs no --doctest-modules)."""
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(OnlineDetector, "OnlineDetector") if t.name.endswith(".learn_one")]
    assert len(tests) == 1 and len(tests[0].examples) >= 5
    runner.run(tests[0])
    assert runner.summarize(verbose=False) == (0, len(tests[0].examples))


def test_one_reading_at_a_time_is_the_batch_api_over_batches_of_one() -> None:
    values = stream(200)
    one, many = OnlineDetector(SMALL, seed=3), OnlineDetector(SMALL, seed=3)
    for row in values[:150]:
        reading = dict(zip(ABC, row, strict=True))
        before = one.score_one(reading)
        assert one.score_one(reading) == before  # scoring changes nothing
        one.learn_one({**reading, "device_id": "mote-07", "label": 0})  # other keys are ignored
        many.learn_many(row[None, :])
    for a, b in zip(one.get_weights().values(), many.get_weights().values(), strict=True):
        np.testing.assert_array_equal(a, b)
    probe = values[150]
    assert one.score_one(dict(zip(ABC, probe, strict=True))) == many.score_many(probe[None, :])[0]
    # A missing key, None and NaN are the same missing value.
    gaps = [
        one.score_one({"a": probe[0], "b": probe[1]}),
        one.score_one({"a": probe[0], "b": probe[1], "c": None}),
    ]
    gaps.append(one.score_one({"a": probe[0], "b": probe[1], "c": float("nan")}))
    assert gaps[0] == gaps[1] == gaps[2] == many.score_many(np.array([[probe[0], probe[1], np.nan]]))[0]
    with pytest.raises(ValueError, match="none of the model's columns"):
        one.learn_one({"temperature": 20.0})
    with pytest.raises(TypeError, match="mapping"):
        one.score_one([1.0, 2.0, 3.0])


def test_one_reading_with_its_time_of_day() -> None:
    config = ModelConfig(features=("x",), window=4, hidden=(8, 2))  # the time of day is an input
    aware, naive = OnlineDetector(config, seed=1), OnlineDetector(config, seed=1)
    start = datetime(2004, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))  # 10:00 UTC
    for i in range(50):
        when = start + timedelta(minutes=i)
        aware.learn_one({"x": float(i % 3)}, ts=when)
        naive.learn_one(
            {"x": float(i % 3)}, ts=np.datetime64(when.astimezone(UTC).replace(tzinfo=None), "us")
        )
    assert aware.score_one({"x": 1.0}, ts=start) == naive.score_one(
        {"x": 1.0}, ts=np.datetime64("2004-03-01T10:00")
    )
    assert aware.score_one({"x": 1.0}, ts=start) != aware.score_one({"x": 1.0}, ts=start + timedelta(hours=6))
    with pytest.raises(ValueError, match="pass ts"):
        aware.learn_one({"x": 1.0})
