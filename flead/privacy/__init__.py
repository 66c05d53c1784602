"""Device-level differential privacy for federated updates: the settings (`PrivacyConfig`), the
Gaussian mechanism that clips and noises an update (`privatise`, `clip`), and the accountant that turns
a device's contributions into (epsilon, delta) with Google's ``dp-accounting`` (`PrivacyLedger`).

The threat models, the neighbouring relation and the sampling assumption are in docs/privacy.md.
"""

from flead.privacy.accountant import (
    Contributions,
    PrivacyLedger,
    contributions_epsilon,
    noise_for_epsilon,
    rdp_epsilon,
)
from flead.privacy.config import PRIVACY_MODES, PrivacyConfig
from flead.privacy.mechanism import (
    DECLARATION_TOLERANCE,
    PrivacyDeclaration,
    clip,
    declaration_refusal,
    gaussian_noise,
    noise_norm_bound,
    privatise,
)

__all__ = [
    "DECLARATION_TOLERANCE",
    "PRIVACY_MODES",
    "Contributions",
    "PrivacyConfig",
    "PrivacyDeclaration",
    "PrivacyLedger",
    "clip",
    "contributions_epsilon",
    "declaration_refusal",
    "gaussian_noise",
    "noise_for_epsilon",
    "noise_norm_bound",
    "privatise",
    "rdp_epsilon",
]
