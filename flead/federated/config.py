"""How the server aggregates: one small, validated dataclass (``AggregationConfig``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flead.privacy.config import PrivacyConfig

STRATEGY_NAMES = ("fedavg", "fedavgm", "fedadam", "median", "trimmed_mean")

# FedAdam's step is about server_lr per coordinate whatever the delta's size (Reddi et al. 2021 tune it
# in 1e-3..1); the averaging strategies apply the mean delta as it is.
FEDADAM_DEFAULT_SERVER_LR = 0.01


@dataclass(frozen=True)
class AggregationConfig:
    """Server-side aggregation settings.

    ``server_lr`` None picks the strategy's default: 1.0 for fedavg, median and trimmed_mean (the new
    model is the aggregate itself), ``1 - momentum`` for fedavgm (an effective step of 1 once the
    momentum has built up, as Hsu et al. 2019 recommend), 0.01 for fedadam.
    ``clip_norm`` clips every update's delta to that L2 norm before aggregation (None = no clipping);
    ``max_update_norm`` refuses updates whose delta norm is above it (None = no bound).
    ``min_updates`` is the fewest accepted updates that make a new version.
    ``privacy``: device-level differential privacy (off by default; see ``flead.privacy``).
    """

    strategy: str = "fedavg"
    server_lr: float | None = None
    momentum: float = 0.9  # fedavgm
    betas: tuple[float, float] = (0.9, 0.99)  # fedadam
    tau: float = 1e-3  # fedadam adaptivity
    trim_fraction: float = 0.1  # trimmed_mean, per side
    clip_norm: float | None = None
    max_staleness: int = 10
    staleness_exponent: float = 0.5
    max_update_norm: float | None = 1e3
    min_updates: int = 1
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}")
        object.__setattr__(self, "betas", tuple(self.betas))
        problems = [
            *_positive("server_lr", self.server_lr, optional=True),
            *_in_unit_interval("momentum", self.momentum),
            *_positive("tau", self.tau),
            *_positive("clip_norm", self.clip_norm, optional=True),
            *_positive("max_update_norm", self.max_update_norm, optional=True),
        ]
        if len(self.betas) != 2:
            problems.append(f"betas must be two numbers, got {self.betas!r}")
        else:
            problems += [
                *_in_unit_interval("betas[0]", self.betas[0]),
                *_in_unit_interval("betas[1]", self.betas[1]),
            ]
        if not _is_number(self.trim_fraction) or not 0.0 <= self.trim_fraction < 0.5:
            problems.append(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        if not _is_number(self.staleness_exponent) or self.staleness_exponent < 0:
            problems.append(f"staleness_exponent must be >= 0, got {self.staleness_exponent!r}")
        if not _is_int(self.max_staleness) or self.max_staleness < 0:
            problems.append(f"max_staleness must be an integer >= 0, got {self.max_staleness!r}")
        if not _is_int(self.min_updates) or self.min_updates < 1:
            problems.append(f"min_updates must be an integer >= 1, got {self.min_updates!r}")
        if not isinstance(self.privacy, PrivacyConfig):
            problems.append(f"privacy must be a PrivacyConfig, got {type(self.privacy).__name__}")
        if problems:
            raise ValueError("invalid AggregationConfig: " + "; ".join(problems))

    @property
    def resolved_server_lr(self) -> float:
        if self.server_lr is not None:
            return float(self.server_lr)
        if self.strategy == "fedavgm":
            return 1.0 - self.momentum
        if self.strategy == "fedadam":
            return FEDADAM_DEFAULT_SERVER_LR
        return 1.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: object, *, optional: bool = False) -> list[str]:
    if value is None and optional:
        return []
    if not _is_number(value) or value <= 0:
        return [f"{name} must be a positive number, got {value!r}"]
    return []


def _in_unit_interval(name: str, value: object) -> list[str]:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        return [f"{name} must be in [0, 1), got {value!r}"]
    return []
