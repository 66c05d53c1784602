"""The network, its gradient, the optimiser and the normaliser: checked against plain arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from flead.model import AnomalyModel, ModelConfig
from flead.model.network import Network
from flead.model.normalizer import RunningNormalizer
from flead.model.optim import Adam, clip_by_global_norm
from flead.model.training import loss_and_gradient


def small_config(kind: str, activation: str = "tanh") -> ModelConfig:
    return ModelConfig(kind=kind, features=("a", "b", "c"), window=4, hidden=(6, 3), activation=activation)


def numeric_gradient(net: Network, loss) -> np.ndarray:
    eps = 1e-6
    grad = np.empty(net.size)
    for i in range(net.size):
        kept = net.flat[i]
        net.flat[i] = kept + eps
        up = loss()
        net.flat[i] = kept - eps
        down = loss()
        net.flat[i] = kept
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["forecaster", "autoencoder"])
def test_backprop_matches_finite_differences(kind: str, activation: str) -> None:
    config = small_config(kind, activation)
    rng = np.random.default_rng(5)
    n, out = 9, config.output_size
    net32 = Network(config.layers(), activation)
    net32.initialise(11)
    net32.flat += rng.normal(0.0, 0.05, net32.size).astype(np.float32)  # non-zero biases too
    net = net32.astype(np.float64)
    x = rng.normal(size=(n, config.input_size))
    target = rng.normal(size=(n, out))
    mask = (rng.random((n, out)) > 0.3) * rng.uniform(0.2, 1.0, (n, out))  # missing and down-weighted
    base = rng.normal(size=(n, out)) if kind == "forecaster" else None
    anchor = net.flat + rng.normal(0.0, 0.1, net.size)
    options = {"base": base, "proximal_mu": 0.7, "anchor": anchor}

    _, analytic = loss_and_gradient(net, x, target, mask, **options)
    numeric = numeric_gradient(net, lambda: loss_and_gradient(net, x, target, mask, **options)[0])

    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)

    # The float32 network computes the same gradient, to float32 precision.
    f32 = {
        **options,
        "base": None if base is None else base.astype(np.float32),
        "anchor": anchor.astype(np.float32),
    }
    _, grad32 = loss_and_gradient(
        net32, x.astype(np.float32), target.astype(np.float32), mask.astype(np.float32), **f32
    )
    assert grad32.dtype == np.float32
    np.testing.assert_allclose(grad32, analytic, rtol=1e-3, atol=1e-5)


def test_adam_learns_a_toy_regression() -> None:
    rng = np.random.default_rng(0)
    net = Network([("net.0", 2, 16), ("net.1", 16, 1)], "tanh")
    net.initialise(0)
    x = rng.uniform(-1, 1, (256, 2)).astype(np.float32)
    y = (np.sin(2 * x[:, :1]) + x[:, 1:] ** 2).astype(np.float32)
    mask = np.ones_like(y)
    adam = Adam(net.size, lr=1e-2)
    first, _ = loss_and_gradient(net, x, y, mask)
    for _ in range(500):
        loss, grad = loss_and_gradient(net, x, y, mask)
        adam.step(net.flat, grad)
    assert loss < 0.02 * first
    assert net.flat.dtype == np.float32 and adam.t == 500


def test_clip_by_global_norm() -> None:
    grad = np.array([3.0, 4.0], np.float32)
    assert clip_by_global_norm(grad, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(grad, [0.6, 0.8], rtol=1e-6)  # same direction, norm 1
    small = np.array([0.3, 0.4], np.float32)
    clip_by_global_norm(small, 1.0)
    np.testing.assert_array_equal(small, np.array([0.3, 0.4], np.float32))  # under the limit: untouched


@pytest.mark.parametrize("clip", [True, False])
def test_clipping_bounds_what_a_wild_gradient_does_to_the_optimiser(clip: bool) -> None:
    """One wild batch (a gradient a million times the usual) moves Adam's moments by at most
    (1 - beta) * max_norm (squared for the second) when clipped; unclipped, its second moment
    would stall learning for thousands of steps."""
    rng = np.random.default_rng(1)
    params = np.zeros(50, np.float32)
    adam = Adam(params.size, lr=1e-3)
    for _ in range(300):
        grad = rng.normal(0.0, 0.01, params.size).astype(np.float32)
        clip_by_global_norm(grad, 1.0)
        adam.step(params, grad)
    m, v = adam.m.copy(), adam.v.copy()
    wild = np.full(params.size, 1e6, np.float32)
    if clip:
        assert clip_by_global_norm(wild, 1.0) > 1e6
        assert np.linalg.norm(wild) == pytest.approx(1.0, rel=1e-6)
    adam.step(params, wild)
    first = np.linalg.norm(adam.m - adam.beta1 * m)
    second = np.abs(adam.v - adam.beta2 * v).sum()
    if clip:
        assert first <= (1 - adam.beta1) * 1.0 * (1 + 1e-5)
        assert second <= (1 - adam.beta2) * 1.0 * (1 + 1e-5)
    else:
        assert first > 1e3 and second > 1e6


def test_seeded_initialisation_is_deterministic() -> None:
    config = ModelConfig()
    one, again, other = (
        AnomalyModel(config, seed=3),
        AnomalyModel(config, seed=3),
        AnomalyModel(config, seed=4),
    )
    for name, value in one.get_weights().items():
        np.testing.assert_array_equal(value, again.get_weights()[name])
    assert any(not np.array_equal(v, other.get_weights()[k]) for k, v in one.get_weights().items())
    biases = [v for k, v in one.get_weights().items() if k.endswith(".b")]
    assert all(not b.any() for b in biases)


def test_weight_names_shapes_and_copies() -> None:
    forecaster = AnomalyModel(ModelConfig(kind="forecaster", window=8, hidden=(32, 16)))
    weights = forecaster.get_weights()
    assert list(weights) == ["net.0.W", "net.0.b", "net.1.W", "net.1.b", "net.2.W", "net.2.b"]
    assert weights["net.0.W"].shape == (8 * 4 + 2, 32) and weights["net.2.W"].shape == (16, 4)
    assert all(w.dtype == np.float32 for w in weights.values())
    weights["net.0.W"][...] = 7.0  # a copy: the model is untouched
    assert not (forecaster.get_weights()["net.0.W"] == 7.0).any()

    autoencoder = AnomalyModel(ModelConfig(kind="autoencoder", window=16, hidden=(64, 8)))
    shapes = {k: v.shape for k, v in autoencoder.get_weights().items()}
    assert shapes == {
        "enc.0.W": (66, 64), "enc.0.b": (64,), "enc.1.W": (64, 8), "enc.1.b": (8,),
        "dec.0.W": (8, 64), "dec.0.b": (64,), "dec.1.W": (64, 64), "dec.1.b": (64,),
    }  # fmt: skip


def test_set_weights_validates_names_shapes_and_values() -> None:
    model = AnomalyModel(ModelConfig(kind="forecaster", window=4, hidden=(8,)))
    good = {k: np.full_like(v, 0.5) for k, v in model.get_weights().items()}
    model.set_weights({k: v.astype(np.float64) for k, v in good.items()})  # other float dtypes are cast
    assert all((v == 0.5).all() and v.dtype == np.float32 for v in model.get_weights().values())

    with pytest.raises(ValueError, match=r"'net.0.W' has shape \(3, 8\)"):
        model.set_weights({**good, "net.0.W": np.zeros((3, 8), np.float32)})
    with pytest.raises(ValueError, match=r"missing \['net.1.b'\]"):
        model.set_weights({k: v for k, v in good.items() if k != "net.1.b"})
    with pytest.raises(ValueError, match=r"extra \['net.9.W'\]"):
        model.set_weights({**good, "net.9.W": np.zeros(1)})
    with pytest.raises(ValueError, match="finite"):
        model.set_weights({**good, "net.1.b": np.full(4, np.nan, np.float32)})
    assert all((v == 0.5).all() for v in model.get_weights().values())  # a rejected set changes nothing


def test_normalizer_merges_batches_like_one_pass_and_skips_nan() -> None:
    rng = np.random.default_rng(2)
    data = rng.normal([10.0, -3.0, 500.0], [2.0, 0.1, 80.0], (1000, 3))
    data[rng.random(data.shape) < 0.1] = np.nan
    normalizer = RunningNormalizer(3)
    for part in np.array_split(data, [1, 7, 300, 301, 650]):
        normalizer.update(part)
    np.testing.assert_allclose(normalizer.mean, np.nanmean(data, axis=0), rtol=1e-12)
    np.testing.assert_allclose(normalizer.std, np.nanstd(data, axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_array_equal(normalizer.count, np.isfinite(data).sum(axis=0))
    z = normalizer.transform(data)
    assert np.isnan(z).sum() == np.isnan(data).sum()
    np.testing.assert_allclose(np.nanmean(z, axis=0), 0.0, atol=1e-12)


def test_normalizer_floors_the_std_and_winsorises_wild_values() -> None:
    normalizer = RunningNormalizer(2, min_std=(0.46, 0.0))
    normalizer.update(np.array([[0.46, 5.0], [0.46, 5.0], [0.46, 5.0]]))
    assert normalizer.std[0] == 0.46  # a dark room's constant light: the sensor's resolution
    assert 0 < normalizer.std[1] < 1e-4  # no floor given: a tiny relative one
    normalizer = RunningNormalizer(1)
    normalizer.update(np.array([[0.0], [1.0], [2.0], [1.0]]))
    before = normalizer.std[0]
    normalizer.update(np.array([[1e9]]), clip=8.0)
    assert normalizer.std[0] < 4 * before  # one wild reading counts as mean + 8 std at most
