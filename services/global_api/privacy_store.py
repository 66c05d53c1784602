"""Each device's differential-privacy spending in ``collection_privacy``: the accountant's ledger, shared
by every replica.

One document per device (``_id`` = its id): its ``contributions`` (noise multiplier -> releases), the
``sources`` of its latest charges, its epsilon at the delta it was computed for, and a ``revision``.
A charge is keyed by its source: ``update:<update key>`` for a local-DP update, ``version:<v>`` for the
central-DP aggregate of version ``v``. It is written with a compare-and-set on ``revision`` and skipped
when its source is already listed, so a retried, replayed or concurrent charge counts once, and two
replicas charging one device cannot both pass its budget. ``sources`` keeps the latest ``SOURCES_KEPT``
(a retry comes soon after the charge; an update's resubmission is recognised from the update store).

When a charge is written (see ``submission`` and ``aggregation``): a local-DP update just before it is
stored as pending, so no stored update goes uncharged (a submission that stops in between leaves a
charge for an update the server received, which is what the device released); a central-DP version's
contributions after the version is inserted, and again (idempotently) by the next aggregation's
repair step, which completes a charge an interrupted aggregation left undone.

Epsilon comes from the accountant in ``flead.privacy``, never from arithmetic here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from flead.privacy.accountant import (
    Contributions,
    PrivacyLedger,
    budget_refusal,
    contributions_epsilon,
    merge_contributions,
)
from flead.privacy.config import PrivacyConfig

SOURCES_KEPT = 1000
MAX_ATTEMPTS = 100
IN_CHUNK = 100
ACCOUNTANT = "dp-accounting RDP, replace-one device, no sampling amplification"


def update_source(key: str) -> str:
    return f"update:{key}"


def version_source(version: int) -> str:
    return f"version:{int(version)}"


class ChargeConflict(RuntimeError):
    """Concurrent charges of one device kept changing its ledger document."""


@dataclass(frozen=True)
class ChargeOutcome:
    charged: tuple[str, ...] = ()  # sources charged now or before
    refused: dict[str, str] = field(default_factory=dict)  # source -> the budget's reason
    epsilon: float = 0.0  # the device's epsilon after


@dataclass(frozen=True)
class DevicePrivacy:
    """What ``GET /api/devices`` shows of a device's privacy."""

    contributions: Contributions
    releases: int
    epsilon: float


class PrivacyStore:
    def __init__(self, collection: Collection) -> None:
        self._ledger = collection

    # ------------------------------------------------------------------------------ reading

    def contributions(self, device_ids: Iterable[str]) -> dict[str, Contributions]:
        """The stored contributions of those of ``device_ids`` that have any."""
        found: dict[str, Contributions] = {}
        for chunk in _chunks(list(dict.fromkeys(device_ids))):
            for doc in self._ledger.find({"_id": {"$in": chunk}}, {"contributions": 1}):
                found[doc["_id"]] = _contributions(doc)
        return found

    def snapshot(self, device_ids: Iterable[str], delta: float) -> PrivacyLedger:
        """The devices' spending as an in-memory `flead.privacy.PrivacyLedger` (a strategy's ``Ledger``)."""
        ledger = PrivacyLedger(delta)
        for device_id, held in self.contributions(device_ids).items():
            ledger.charge(device_id, held)
        return ledger

    def devices(self, delta: float) -> dict[str, DevicePrivacy]:
        """Every device in the ledger: its contributions, releases and epsilon at ``delta``."""
        found = {}
        for doc in self._ledger.find({}, {"contributions": 1, "epsilon": 1, "delta": 1}):
            held = _contributions(doc)
            stored = doc.get("epsilon")
            epsilon = stored if doc.get("delta") == delta and stored is not None else None
            found[str(doc["_id"])] = DevicePrivacy(
                contributions=held,
                releases=sum(held.values()),
                epsilon=contributions_epsilon(held, delta) if epsilon is None else float(epsilon),
            )
        return found

    # ------------------------------------------------------------------------------ writing

    def charge(
        self,
        device_id: str,
        charges: Iterable[tuple[str, Mapping[float, int]]],
        *,
        privacy: PrivacyConfig,
        enforce_budget: bool = True,
    ) -> ChargeOutcome:
        """Add each ``(source, contributions)`` not charged before to the device's ledger, in order; with
        ``enforce_budget``, one that would take it past ``privacy.epsilon_budget`` is refused instead."""
        charges = list(dict(charges).items())  # one charge per source
        for _ in range(MAX_ATTEMPTS):
            doc = self._ledger.find_one({"_id": device_id}) or {}
            held = _contributions(doc)
            done = set(doc.get("sources") or ())
            new: list[str] = []
            refused: dict[str, str] = {}
            epsilon = contributions_epsilon(held, privacy.delta)
            for source, released in charges:
                if source in done:
                    continue
                after = merge_contributions(held, released)
                after_epsilon = contributions_epsilon(after, privacy.delta)
                budget = privacy.epsilon_budget if enforce_budget else None
                reason = budget_refusal(epsilon, after_epsilon, budget, privacy.delta)
                if reason is not None:
                    refused[source] = reason
                    continue
                held, epsilon = after, after_epsilon
                new.append(source)
            charged = tuple(source for source, _ in charges if source not in refused)
            if not new:
                return ChargeOutcome(charged, refused, epsilon)
            fields = {
                "contributions": [[multiplier, count] for multiplier, count in sorted(held.items())],
                "releases": sum(held.values()),
                "epsilon": epsilon,
                "delta": privacy.delta,
                "sources": [*(doc.get("sources") or ()), *new][-SOURCES_KEPT:],
                "revision": int(doc.get("revision", 0)) + 1,
                "updated_at": datetime.now(UTC),
            }
            if not doc:
                try:
                    self._ledger.insert_one({"_id": device_id, **fields})
                except DuplicateKeyError:  # another charge created it first: read it again
                    continue
            elif (
                self._ledger.update_one(
                    {"_id": device_id, "revision": doc.get("revision", 0)}, {"$set": fields}
                ).matched_count
                == 0
            ):
                time.sleep(0.001)  # another charge changed it: read it again
                continue
            return ChargeOutcome(charged, refused, epsilon)
        raise ChargeConflict(f"the privacy ledger of {device_id!r} kept changing over {MAX_ATTEMPTS} tries")


def version_privacy(
    privacy: PrivacyConfig,
    *,
    parent: dict | None = None,
    parent_version: int = 0,
    epsilons: Mapping[str, float] | None = None,
    contributions: Mapping[str, Contributions] | None = None,
) -> dict:
    """The ``privacy`` block of a new version: the deployment's mechanism and the worst epsilon of any
    device its weights carry (``epsilons``: this version's contributors', after charging; the parent's
    carries the earlier ones). Version 0 holds no device data: epsilon 0 under DP. Epsilon is None (no
    bound) when DP is off, or when an ancestor other than version 0 was made without it."""
    if not privacy.enabled:
        return {"mode": "off", "epsilon": None, "accountant": None}
    epsilons = epsilons or {}
    inherited = 0.0 if parent_version == 0 else version_epsilon(parent)
    worst = max([inherited, *epsilons.values()])
    block: dict = {
        "mode": privacy.mode,
        "clip_norm": privacy.clip_norm,
        "noise_multiplier": privacy.noise_multiplier,
        "delta": privacy.delta,
        "epsilon_budget": privacy.epsilon_budget,
        "epsilon": worst if math.isfinite(worst) else None,
        "accountant": ACCOUNTANT,
        "n_contributors": len(epsilons),
    }
    if not math.isfinite(inherited):
        block["note"] = f"version {parent_version} or an earlier one was made without DP"
    if privacy.mode == "central":
        block["contributions"] = [
            {"device_id": device_id, "noise_multiplier": multiplier, "count": count}
            for device_id, released in sorted((contributions or {}).items())
            for multiplier, count in sorted(released.items())
        ]
    return block


def version_epsilon(block: dict | None) -> float:
    """A stored version's epsilon; infinite when it was made without DP (or before FLEAD had DP)."""
    if not block or block.get("mode", "off") == "off" or block.get("epsilon") is None:
        return math.inf
    return float(block["epsilon"])


def stored_contributions(block: dict | None) -> dict[str, Contributions]:
    """The per-device contributions listed in a central-DP version's block."""
    found: dict[str, Contributions] = {}
    for entry in (block or {}).get("contributions") or ():
        held = found.setdefault(entry["device_id"], {})
        multiplier = float(entry["noise_multiplier"])
        held[multiplier] = held.get(multiplier, 0) + int(entry["count"])
    return found


def _contributions(doc: Mapping) -> Contributions:
    return {float(multiplier): int(count) for multiplier, count in doc.get("contributions") or ()}


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), IN_CHUNK):
        yield keys[start : start + IN_CHUNK]


def device_privacy(spent: DevicePrivacy | None, privacy: PrivacyConfig) -> dict:
    """A device's ``privacy`` in ``GET /api/devices``: its epsilon (None when DP is off: no bound), the
    releases counted, the budget, and whether one more release at the deployment's noise multiplier
    would pass it (its updates are then refused)."""
    held = spent.contributions if spent else {}
    releases = spent.releases if spent else 0
    if not privacy.enabled:
        return {
            "mode": "off",
            "epsilon": None,
            "delta": None,
            "releases": releases,
            "budget": None,
            "budget_exhausted": False,
        }
    epsilon = spent.epsilon if spent else 0.0
    exhausted = False
    if privacy.epsilon_budget is not None:
        after = contributions_epsilon(merge_contributions(held, {privacy.noise_multiplier: 1}), privacy.delta)
        exhausted = budget_refusal(epsilon, after, privacy.epsilon_budget, privacy.delta) is not None
    return {
        "mode": privacy.mode,
        "epsilon": epsilon,
        "delta": privacy.delta,
        "releases": releases,
        "budget": privacy.epsilon_budget,
        "budget_exhausted": exhausted,
    }
