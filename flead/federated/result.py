"""What an aggregation reports: the new version (or why none was made) and every update's fate."""

from __future__ import annotations

from dataclasses import dataclass, field

from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.privacy.accountant import Contributions


@dataclass(frozen=True)
class AcceptedUpdate:
    """An update that passed validation, and how much it counted.

    ``weight`` is its share of the aggregate: ``n_samples / total samples`` for the averaging strategies,
    a nominal ``1 / n_updates`` for median and trimmed mean (which ignore sample counts). ``discount``
    is the staleness discount applied to its delta, ``clipped`` says whether ``clip_norm`` shrank it;
    ``norm`` is its delta's L2 norm before clipping.
    """

    device_id: str
    update_id: str
    base_version: int
    n_samples: int
    staleness: int
    discount: float
    weight: float
    norm: float
    clipped: bool


@dataclass(frozen=True)
class RefusedUpdate:
    device_id: object
    update_id: object
    reason: str

    @classmethod
    def of(cls, update: LocalUpdate, reason: str) -> RefusedUpdate:
        return cls(device_id=update.device_id, update_id=update.update_id, reason=reason)


@dataclass(frozen=True)
class AggregationSummary:
    """Over the accepted updates; ``mean_loss`` is sample-weighted over those reporting a ``loss``
    metric (None when none does)."""

    n_updates: int
    n_devices: int
    total_samples: int
    mean_staleness: float | None
    mean_loss: float | None
    n_clipped: int
    n_refused: int


@dataclass(frozen=True)
class AggregationResult:
    """``new_state`` is the next version, or None when no version was made (``skipped_reason`` says
    why: no accepted update, fewer than ``min_updates``, ...). ``accepted`` lists the valid updates;
    they are applied only when ``new_state`` is not None. ``contributions``: under central DP, what each
    device released in this version (for the accountant; empty otherwise)."""

    previous_version: int
    new_state: GlobalState | None
    accepted: tuple[AcceptedUpdate, ...]
    refused: tuple[RefusedUpdate, ...]
    summary: AggregationSummary
    skipped_reason: str | None = None
    contributions: dict[str, Contributions] = field(default_factory=dict)

    @property
    def created(self) -> bool:
        return self.new_state is not None
