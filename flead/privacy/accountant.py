"""Epsilon of a device's contributions, with Google's ``dp-accounting`` (RDP accountant).

A device's *contributions* are the Gaussian mechanisms its readings went through: how many releases at
each noise multiplier, the multiplier being the noise's standard deviation over the clip norm ``C`` of
the device's total share of that release (one update: ``z``; k updates summed into one central
aggregate: ``z / k``).

Neighbouring relation: a device's readings replaced by any others (``REPLACE_ONE``). FLEAD publishes
which devices contributed to each version, so membership is not what DP protects here; the content of
the readings is. Two clipped updates then differ by up to ``2 C``, so a release at multiplier ``z`` is
``GaussianDpEvent(z / 2)`` (dp-accounting's multiplier is relative to the L2 sensitivity).

Sampling: none assumed. FedBuff arrivals are not Poisson-sampled (a device pushes when it has learned
enough, not at random), so no amplification by sampling is claimed: every contribution is composed as a
full Gaussian mechanism. Any randomness in participation could only lower the true epsilon, so the
figure is an upper bound.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dp_accounting

# dp-accounting is imported where epsilon is computed, not here: it pulls SciPy and mpmath in, about a
# second of start-up that every process importing flead.federated would pay with DP off.

Contributions = dict[float, int]  # noise multiplier -> releases at it
REPLACE_ONE_SENSITIVITY = 2.0  # in units of the clip norm
BUDGET_EXHAUSTED = "privacy budget exhausted"  # how every budget refusal's reason starts


def merge_contributions(*parts: Mapping[float, int]) -> Contributions:
    """The contributions together (multipliers equal to 9 decimals are one)."""
    merged: Contributions = {}
    for part in parts:
        for multiplier, count in part.items():
            if count > 0:
                key = round(float(multiplier), 9)
                merged[key] = merged.get(key, 0) + int(count)
    return merged


def contributions_event(contributions: Mapping[float, int]) -> dp_accounting.DpEvent:
    """The contributions as one dp-accounting event (replace-one: multiplier / 2 per release)."""
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.GaussianDpEvent(multiplier / REPLACE_ONE_SENSITIVITY), count
            )
            for multiplier, count in sorted(contributions.items())
            if count > 0
        ]
    )


@lru_cache(maxsize=4096)
def _rdp_epsilon(items: tuple[tuple[float, int], ...], delta: float) -> float:
    if not items:
        return 0.0
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(contributions_event(dict(items)))
    return float(accountant.get_epsilon(delta))


def contributions_epsilon(contributions: Mapping[float, int], delta: float) -> float:
    """Epsilon at ``delta`` of these contributions composed (0 when there are none)."""
    return _rdp_epsilon(tuple(sorted(merge_contributions(contributions).items())), float(delta))


def rdp_epsilon(noise_multiplier: float, count: int, delta: float) -> float:
    """Epsilon of ``count`` releases at ``noise_multiplier``."""
    return contributions_epsilon({noise_multiplier: count}, delta)


def noise_for_epsilon(target_epsilon: float, count: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1 %) whose ``count`` releases stay within ``target_epsilon``."""
    if target_epsilon <= 0 or count < 1:
        raise ValueError(f"target_epsilon must be > 0 and count >= 1, got {target_epsilon!r}, {count!r}")

    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    def event(multiplier: float) -> dp_accounting.DpEvent:
        return contributions_event({multiplier: count})

    return float(
        dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            event,
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-3,
        )
    )


class PrivacyLedger:
    """Every device's contributions, in memory, and its epsilon at ``delta`` (thread-safe).

    The global model service keeps the same ledger in MongoDB; the simulation and the stream trainer's
    devices use this one.
    """

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self._devices: dict[str, Contributions] = {}
        self._lock = threading.Lock()

    def contributions(self, device_id: str) -> Contributions:
        with self._lock:
            return dict(self._devices.get(device_id, {}))

    def epsilon(self, device_id: str, extra: Mapping[float, int] | None = None) -> float:
        """The device's epsilon, or what it would be after ``extra`` contributions."""
        merged = merge_contributions(self.contributions(device_id), extra or {})
        return contributions_epsilon(merged, self.delta)

    def charge(self, device_id: str, contributions: Mapping[float, int]) -> float:
        """Add ``contributions`` to the device's; its epsilon after."""
        with self._lock:
            self._devices[device_id] = merge_contributions(self._devices.get(device_id, {}), contributions)
        return self.epsilon(device_id)

    def refusal(self, device_id: str, extra: Mapping[float, int], budget: float | None) -> str | None:
        """Why the device may not make ``extra`` contributions under ``budget``, or None."""
        return budget_refusal(self.epsilon(device_id), self.epsilon(device_id, extra), budget, self.delta)

    def max_epsilon(self, device_ids: Iterable[str]) -> float:
        return max((self.epsilon(device_id) for device_id in device_ids), default=0.0)


def budget_refusal(current: float, after: float, budget: float | None, delta: float) -> str | None:
    """The refusal of a contribution that would take a device from ``current`` to ``after`` epsilon."""
    if budget is None or after <= budget or not math.isfinite(budget):
        return None
    return (
        f"{BUDGET_EXHAUSTED}: this update would take the device to epsilon {after:.3g} "
        f"(delta {delta:g}), over the budget of {budget:g} (it is at {current:.3g}); its updates are "
        "refused from now on, and it keeps detecting with its personal model"
    )
