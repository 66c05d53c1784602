"""The versioned global model: weights plus the server optimiser's state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from flead.federated.weights import Weights, all_finite, frozen_float32


# eq=False: comparing dicts of arrays is ambiguous; states are compared by version.
@dataclass(frozen=True, eq=False)
class GlobalState:
    """One global model version.

    ``weights`` are read-only float32 copies (pass them to a model, which must copy before training
    in place). ``server_state`` holds the server optimiser's arrays by kind and weight name, e.g.
    ``{"momentum": {...}}`` for fedavgm or ``{"adam_m": {...}, "adam_v": {...}}`` for fedadam; it is
    empty for the stateless strategies and starts empty at version 0.
    """

    version: int
    weights: Weights
    server_state: dict[str, Weights] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    parent_version: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int | np.integer)
            or self.version < 0
        ):
            raise ValueError(f"version must be an integer >= 0, got {self.version!r}")
        if not isinstance(self.weights, Mapping) or not self.weights:
            raise ValueError("weights must be a non-empty mapping of name to array")
        weights = frozen_float32(self.weights)
        if not all_finite(weights):
            raise ValueError("global weights must be finite (no NaN or Inf)")
        object.__setattr__(self, "version", int(self.version))
        object.__setattr__(self, "weights", weights)
        object.__setattr__(
            self, "server_state", {kind: frozen_float32(arrays) for kind, arrays in self.server_state.items()}
        )

    @classmethod
    def initial(cls, weights: Mapping[str, np.ndarray], *, now: datetime | None = None) -> GlobalState:
        """Version 0: the starting model, no parent, a fresh server optimiser."""
        return cls(version=0, weights=dict(weights), created_at=now or datetime.now(UTC))
