"""Checks a local update against the global state and turns it into a float64 delta, or refuses it
with a reason a device operator can act on."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flead.federated.config import AggregationConfig
from flead.federated.staleness import staleness_refusal
from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.federated.weights import global_norm
from flead.privacy.mechanism import declaration_refusal, noise_norm_bound

FLOAT32_MAX = float(np.finfo(np.float32).max)

History = Mapping[int, Mapping[str, np.ndarray]]


class UpdateRefused(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class PreparedUpdate:
    """A valid update: the original plus its delta against its base version (float64) and the delta's
    L2 norm over all arrays."""

    update: LocalUpdate
    delta: dict[str, np.ndarray]
    norm: float


def prepare_update(
    update: LocalUpdate,
    state: GlobalState,
    config: AggregationConfig,
    history: History | None = None,
) -> PreparedUpdate:
    """Validate ``update`` against ``state`` and normalise it to a delta, or raise ``UpdateRefused``.

    A ``kind="weights"`` update is turned into ``weights - base weights``; the base weights are the
    current ones when ``base_version == state.version``, else they are looked up in ``history``
    (version -> weights). Deltas are never rebased: a delta from an older version is applied to the
    current weights as it is (FedBuff), discounted for its staleness at aggregation.
    """
    check_identity(update)
    check_samples(update.n_samples)
    check_base_version(update.base_version, state.version, config.max_staleness)
    check_metrics(update.metrics)
    if update.kind not in ("delta", "weights"):
        raise UpdateRefused(f"kind must be 'delta' or 'weights', got {update.kind!r}")
    privacy = config.privacy
    if privacy.mode == "local":
        reason = declaration_refusal(update.privacy, privacy)
        if reason is not None:
            raise UpdateRefused(reason)
    arrays = checked_arrays(update.arrays, state.weights)
    if update.kind == "weights":
        base = base_weights(update.base_version, state, history)
        delta = {name: arrays[name] - np.asarray(base[name], dtype=np.float64) for name in arrays}
    else:
        delta = arrays
    norm = global_norm(delta)
    if not math.isfinite(norm):
        raise UpdateRefused("the update's delta norm overflows")
    limit = config.max_update_norm
    if limit is not None and privacy.mode == "local":  # the declared noise makes the norm large
        size = sum(array.size for array in arrays.values())
        declared = update.privacy or {}
        limit = max(limit, noise_norm_bound(declared["clip_norm"], declared["noise_multiplier"], size))
    if limit is not None and norm > limit:
        raise UpdateRefused(
            f"delta norm {norm:.4g} is above max_update_norm {limit:.4g} (a diverged or malicious update)"
        )
    return PreparedUpdate(update=update, delta=delta, norm=norm)


def check_identity(update: LocalUpdate) -> None:
    for name in ("device_id", "update_id"):
        value = getattr(update, name)
        if not isinstance(value, str) or not value:
            raise UpdateRefused(f"{name} must be a non-empty string, got {value!r}")


def check_samples(n_samples: object) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples <= 0:
        raise UpdateRefused(f"n_samples must be a positive integer, got {n_samples!r}")


def check_base_version(base_version: object, current_version: int, max_staleness: int) -> None:
    if isinstance(base_version, bool) or not isinstance(base_version, numbers.Integral) or base_version < 0:
        raise UpdateRefused(f"base_version must be an integer >= 0, got {base_version!r}")
    reason = staleness_refusal(int(base_version), current_version, max_staleness)
    if reason is not None:
        raise UpdateRefused(reason)


def check_metrics(metrics: object) -> None:
    if not isinstance(metrics, Mapping):
        raise UpdateRefused(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise UpdateRefused(f"metric {name!r} must be a finite number, got {value!r}")


def checked_arrays(arrays: object, expected: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The update's arrays as float64, with the global model's names and shapes, all finite."""
    if not isinstance(arrays, Mapping):
        raise UpdateRefused(f"arrays must be a mapping of name to array, got {type(arrays).__name__}")
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(str(name) for name in set(arrays) - set(expected))
    if missing or unexpected:
        raise UpdateRefused(
            f"array names do not match the global model: missing {missing}, unexpected {unexpected}"
        )
    checked = {}
    for name, reference in expected.items():
        try:
            array = np.asarray(arrays[name])
        except (TypeError, ValueError) as exc:
            raise UpdateRefused(f"array {name!r} is not a numeric array: {exc}") from None
        if array.shape != reference.shape:
            raise UpdateRefused(f"array {name!r} has shape {array.shape}, expected {reference.shape}")
        # Any float converts to float32 by rounding; integers, bools, complex or objects mean a broken client.
        if array.dtype.kind != "f":
            raise UpdateRefused(f"array {name!r} has dtype {array.dtype}, expected a floating-point dtype")
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(np.float64)
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            raise UpdateRefused(
                f"array {name!r} contains {n_nan} NaN and {int(array.size - finite.sum()) - n_nan} Inf values"
            )
        if array.size and float(np.abs(array).max()) > FLOAT32_MAX:
            raise UpdateRefused(f"array {name!r} has values beyond the float32 range")
        checked[name] = array
    return checked


def base_weights(base_version: int, state: GlobalState, history: History | None) -> Mapping[str, np.ndarray]:
    if base_version == state.version:
        return state.weights
    if history is not None and base_version in history:
        return history[base_version]
    raise UpdateRefused(
        f"full weights based on version {base_version} cannot be turned into a delta: the server no longer "
        "holds that version; send a delta instead"
    )
