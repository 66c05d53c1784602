"""A stack of dense layers over one flat parameter buffer, with backprop, in NumPy.

All parameters live in one contiguous array (``flat``) and each weight matrix is a view into it, so
the optimiser, gradient clipping and the proximal term work on one vector instead of per layer. The
gradient is allocated per backward pass: a network (one per device) holds only its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flead.model.config import ACTIVATIONS


class Network:
    """Dense layers ``h = act(h @ W + b)``; the last layer is linear."""

    def __init__(self, layers: Sequence[tuple[str, int, int]], activation: str, dtype=np.float32) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.layers = [(name, int(fan_in), int(fan_out)) for name, fan_in, fan_out in layers]
        self.activation = activation
        self.dtype = np.dtype(dtype)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, fan_in, fan_out in self.layers:
            self.shapes[f"{name}.W"] = (fan_in, fan_out)
            self.shapes[f"{name}.b"] = (fan_out,)
        self._spans: list[tuple[str, int, int, tuple[int, ...]]] = []  # name, start, stop, shape
        offset = 0
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            self._spans.append((name, offset, offset + n, shape))
            offset += n
        self.size = offset
        self.flat = np.zeros(self.size, self.dtype)
        self.params = self._views(self.flat)

    def _views(self, buffer: np.ndarray) -> dict[str, np.ndarray]:
        return {name: buffer[start:stop].reshape(shape) for name, start, stop, shape in self._spans}

    def initialise(self, seed: int) -> None:
        """Glorot-uniform (tanh) or He-uniform (relu) weights, zero biases, from `seed` only."""
        rng = np.random.default_rng(seed)
        for name, fan_in, fan_out in self.layers:
            limit = np.sqrt(6.0 / (fan_in + fan_out)) if self.activation == "tanh" else np.sqrt(6.0 / fan_in)
            self.params[f"{name}.W"][...] = rng.uniform(-limit, limit, (fan_in, fan_out))
            self.params[f"{name}.b"][...] = 0.0

    def astype(self, dtype) -> Network:
        copy = Network(self.layers, self.activation, dtype)
        copy.flat[...] = self.flat
        return copy

    # ------------------------------------------------------------------------------------- weights

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: view.copy() for name, view in self.params.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        if self.shared:
            self.own()
        self.flat[...] = self.flatten(weights)

    def share(self, flat: np.ndarray) -> None:
        """Use `flat` (this layout, e.g. a global version's weights held once for many devices) as the
        parameters, read-only: training needs `own` first, and a write raises instead of leaking."""
        if flat.shape != (self.size,) or flat.dtype != self.dtype:
            raise ValueError(f"shared weights must be ({self.size},) {self.dtype}: {flat.shape} {flat.dtype}")
        view = flat.view()
        view.flags.writeable = False
        self.flat, self.params = view, self._views(view)

    def own(self) -> None:
        """A private, writable copy of the parameters (copy-on-write after `share`)."""
        if self.shared:
            self.flat = self.flat.copy()
            self.params = self._views(self.flat)

    @property
    def shared(self) -> bool:
        return not self.flat.flags.writeable

    def flatten(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """`weights` as one vector in this network's layout, after checking names, shapes and values."""
        missing = self.shapes.keys() - weights.keys()
        extra = weights.keys() - self.shapes.keys()
        if missing or extra:
            raise ValueError(
                f"weights do not match the architecture: missing {sorted(missing)}, extra {sorted(extra)}"
            )
        parts = []
        for name, shape in self.shapes.items():
            value = np.asarray(weights[name])
            if value.shape != shape:
                raise ValueError(f"weight {name!r} has shape {value.shape}, the architecture needs {shape}")
            if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
                raise ValueError(f"weight {name!r} must hold finite numbers")
            parts.append(value.astype(self.dtype, copy=False).reshape(-1))
        return np.concatenate(parts)

    # ------------------------------------------------------------------------------- forward/backward

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output for inputs `x` (n, fan_in of the first layer) and the activations backward needs."""
        h = x
        activations = [x]
        last = len(self.layers) - 1
        for i, (name, _, _) in enumerate(self.layers):
            h = h @ self.params[f"{name}.W"]
            h += self.params[f"{name}.b"]
            if i < last:
                if self.activation == "tanh":
                    np.tanh(h, out=h)
                else:
                    np.maximum(h, 0.0, out=h)
                activations.append(h)
        return h, activations

    def backward(self, activations: list[np.ndarray], d_out: np.ndarray) -> np.ndarray:
        """Gradient of the loss w.r.t. all parameters (a new flat vector) given dLoss/dOutput `d_out`."""
        grad = np.empty(self.size, self.dtype)
        grads = self._views(grad)
        d = d_out
        for i in range(len(self.layers) - 1, -1, -1):
            name = self.layers[i][0]
            h_in = activations[i]
            np.matmul(h_in.T, d, out=grads[f"{name}.W"])
            np.sum(d, axis=0, out=grads[f"{name}.b"])
            if i:
                d = d @ self.params[f"{name}.W"].T
                if self.activation == "tanh":
                    d *= 1.0 - h_in * h_in
                else:
                    d *= h_in > 0
        return grad
