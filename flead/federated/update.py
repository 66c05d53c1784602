"""What a device sends: its learning since a global version, as a delta or as full weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

UpdateKind = Literal["delta", "weights"]


@dataclass(frozen=True, eq=False)
class LocalUpdate:
    """One device's contribution, trained from global version ``base_version``.

    ``arrays`` hold either the change since the base (``kind="delta"``, what a streaming device should
    send) or the device's full weights (``kind="weights"``; the server turns them into a delta against
    the weights of ``base_version``, so it must still hold that version). ``n_samples`` counts the
    samples learned since the base (or since the device's previous update). ``(device_id, update_id)``
    identifies the update: resubmitting it is ignored. ``metrics`` are training metrics, e.g.
    ``{"loss": 0.12}``. ``privacy`` declares the clipping and noise a device applied (local DP), which a
    deployment that requires it checks.

    Nothing is checked here: an update comes from outside and is validated when submitted, where a bad
    one is refused with a reason (see ``flead.federated.validation``).
    """

    device_id: str
    update_id: str
    base_version: int
    n_samples: int
    arrays: Mapping[str, np.ndarray]
    kind: UpdateKind = "delta"
    metrics: Mapping[str, float] = field(default_factory=dict)
    # Local differential privacy applied on the device: {"mechanism": "gaussian", "clip_norm": C,
    # "noise_multiplier": z} (`flead.privacy.PrivacyDeclaration`); None: none declared.
    privacy: Mapping[str, object] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.device_id, self.update_id)
