"""The Gaussian mechanism on a model update: clip its L2 norm to ``clip_norm``, add
``N(0, (noise_multiplier * clip_norm)**2)`` to every coordinate.

An update over the clip bound is scaled down to it, never refused. A local-DP update declares what was
applied (`PrivacyDeclaration`), which the server checks against the deployment's requirement.

The noise comes from NumPy's PCG64 seeded from the OS's entropy: not a cryptographically secure
generator, and floating-point noise has known attacks on its low bits (Mironov 2012); docs/privacy.md
says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flead.privacy.config import PrivacyConfig

Weights = dict[str, np.ndarray]

# A declared clip norm or noise multiplier may differ from the requirement by this relative rounding.
DECLARATION_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PrivacyDeclaration:
    """What a device applied to its update before sending it (local DP)."""

    clip_norm: float
    noise_multiplier: float
    mechanism: str = "gaussian"

    def to_dict(self) -> dict:
        return {
            "mechanism": self.mechanism,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
        }


def clip(arrays: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float, bool]:
    """(the arrays scaled to L2 norm ``clip_norm`` if over it, as float64; their norm before; whether
    they were scaled)."""
    # flead.federated's global_norm, computed here: flead.federated imports this module.
    norm = math.sqrt(sum(float(np.vdot(a, a)) for a in (np.asarray(x, np.float64) for x in arrays.values())))
    scale = clip_norm / norm if norm > clip_norm else 1.0
    clipped = {name: np.asarray(a, dtype=np.float64) * scale for name, a in arrays.items()}
    return clipped, norm, scale < 1.0


def gaussian_noise(arrays: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> Weights:
    """Independent ``N(0, std**2)`` noise shaped like ``arrays`` (float64)."""
    return {name: rng.normal(0.0, std, size=np.shape(a)) for name, a in arrays.items()}


def privatise(
    arrays: Mapping[str, np.ndarray],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> Weights:
    """The Gaussian mechanism: ``clip(arrays) + N(0, (noise_multiplier * clip_norm)**2)``, float32."""
    clipped, _, _ = clip(arrays, clip_norm)
    noise = gaussian_noise(clipped, noise_multiplier * clip_norm, rng)
    return {name: (clipped[name] + noise[name]).astype(np.float32) for name in clipped}


def noise_norm_bound(clip_norm: float, noise_multiplier: float, size: int) -> float:
    """An L2 norm a privatised update of ``size`` coordinates exceeds with probability below 1e-12: the
    clip norm plus the noise's (chi distribution: mean ~ sigma sqrt(size), sub-Gaussian tail)."""
    sigma = noise_multiplier * clip_norm
    return clip_norm + sigma * (math.sqrt(size) + 8.0)


def declaration_refusal(declared: Mapping[str, object] | None, config: PrivacyConfig) -> str | None:
    """Why an update with this declaration cannot enter a ``local``-DP deployment, or None."""
    required = (
        f"this deployment requires local differential privacy: clip to at most {config.clip_norm:g} and "
        f"add Gaussian noise with a noise multiplier of at least {config.noise_multiplier:g}"
    )
    if not declared:
        return f"the update declares no privacy (clip_norm, noise_multiplier); {required}"
    mechanism = declared.get("mechanism", "gaussian")
    clip_norm, multiplier = declared.get("clip_norm"), declared.get("noise_multiplier")
    if mechanism != "gaussian" or not _finite(clip_norm) or not _finite(multiplier):
        return f"the update's privacy declaration is incomplete or unknown ({dict(declared)}); {required}"
    if clip_norm > config.clip_norm * (1 + DECLARATION_TOLERANCE):
        return f"the update declares clip_norm {clip_norm:g}, over this deployment's {config.clip_norm:g}"
    if multiplier < config.noise_multiplier * (1 - DECLARATION_TOLERANCE):
        return (
            f"the update declares noise_multiplier {multiplier:g}, under this deployment's "
            f"{config.noise_multiplier:g}"
        )
    return None


def _finite(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
