"""The training objective: masked mean squared error, plus the FedProx proximal term."""

from __future__ import annotations

import numpy as np

from flead.model.network import Network


def loss_and_gradient(
    net: Network,
    x: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    *,
    base: np.ndarray | None = None,
    proximal_mu: float = 0.0,
    anchor: np.ndarray | None = None,
    forward: tuple[np.ndarray, list[np.ndarray]] | None = None,
) -> tuple[float, np.ndarray]:
    """(loss, its gradient w.r.t. ``net.flat``).

    loss = sum(mask * (pred - target)^2) / sum(mask) + proximal_mu / 2 * ||flat - anchor||^2, with
    pred = net(x) + base. `mask` weighs each entry (0 = not learned: missing or judged anomalous);
    `target` must be finite where the mask is 0 too. `forward` reuses a forward pass of `x`.
    """
    out, activations = forward if forward is not None else net.forward(x)
    pred = out + base if base is not None else out
    err = pred - target
    denom = max(float(mask.sum()), 1.0)
    weighted = mask * err
    loss = float(np.vdot(weighted, err)) / denom
    grad = net.backward(activations, weighted * (2.0 / denom))
    if proximal_mu:
        if anchor is None:
            raise ValueError("proximal_mu needs an anchor (the global weights)")
        diff = net.flat - anchor
        loss += 0.5 * proximal_mu * float(np.dot(diff, diff))
        grad += proximal_mu * diff
    return loss, grad
