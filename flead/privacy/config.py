"""A deployment's differential-privacy settings: one small, validated dataclass (``PrivacyConfig``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PRIVACY_MODES = ("off", "local", "central")


@dataclass(frozen=True)
class PrivacyConfig:
    """How device updates are privatised (see docs/privacy.md for the threat models).

    ``mode``: ``off`` (no DP, the default); ``local``: every device clips its update to ``clip_norm``
    and adds Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` before it leaves the
    device, and the server refuses updates that do not declare at least that; ``central``: a trusted
    server clips every update and adds the noise when it aggregates. ``delta`` is the delta of every
    (epsilon, delta) reported. ``epsilon_budget``: a device whose epsilon would pass it has its updates
    refused (it keeps detecting with its personal model); None = no budget.
    """

    mode: str = "off"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in PRIVACY_MODES:
            problems.append(f"mode must be one of {', '.join(PRIVACY_MODES)}, got {self.mode!r}")
        if not _finite(self.clip_norm) or self.clip_norm <= 0:
            problems.append(f"clip_norm must be a positive number, got {self.clip_norm!r}")
        if not _finite(self.noise_multiplier) or self.noise_multiplier <= 0:
            problems.append(f"noise_multiplier must be a positive number, got {self.noise_multiplier!r}")
        if not _finite(self.delta) or not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta!r}")
        if self.epsilon_budget is not None and (not _finite(self.epsilon_budget) or self.epsilon_budget <= 0):
            problems.append(f"epsilon_budget must be a positive number or None, got {self.epsilon_budget!r}")
        if problems:
            raise ValueError("invalid PrivacyConfig: " + "; ".join(problems))

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
