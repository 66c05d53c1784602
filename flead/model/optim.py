"""Adam and gradient clipping on flat parameter vectors."""

from __future__ import annotations

import numpy as np


def clip_by_global_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale `grad` in place so its L2 norm is at most `max_norm`; returns the norm before clipping."""
    norm = float(np.sqrt(np.dot(grad, grad)))
    if norm > max_norm:
        grad *= max_norm / norm
    return norm


class Adam:
    """Adam (Kingma & Ba) with bias correction, updating a flat parameter vector in place."""

    def __init__(
        self, size: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.size = size
        # The moments are made by the first step: a device that does not train holds none.
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        """One update of `params` (in place) from `grad` (not changed)."""
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros(self.size, np.float32), np.zeros(self.size, np.float32)
        self.t += 1
        scratch = (1.0 - self.beta2) * grad  # the same operations, in the same order, as the textbook form
        scratch *= grad
        self.v *= self.beta2
        self.v += scratch
        np.multiply(grad, 1.0 - self.beta1, out=scratch)
        self.m *= self.beta1
        self.m += scratch
        step = self.lr * np.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        denominator = np.sqrt(self.v)
        denominator += self.eps
        update = step * self.m  # float64: `step` is a NumPy float64
        update /= denominator
        params -= update

    def reset(self) -> None:
        """Forget the moments, e.g. after adopting new global weights."""
        self.m = self.v = None
        self.t = 0
