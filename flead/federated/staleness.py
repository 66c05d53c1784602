"""Staleness rules for buffered, semi-asynchronous aggregation (FedBuff, Nguyen et al. 2022).

An update trained from global version ``base_version`` reaches a server now at ``current_version``;
its staleness is the difference. Stale updates are discounted polynomially,
``(1 + staleness) ** -exponent`` (exponent 0.5 = FedBuff's ``1 / sqrt(1 + staleness)``; 0 = no
discount), and refused beyond a maximum staleness.
"""

from __future__ import annotations


def staleness_discount(staleness: int, exponent: float) -> float:
    return (1.0 + staleness) ** -exponent


def staleness_refusal(base_version: int, current_version: int, max_staleness: int) -> str | None:
    """Why an update based on ``base_version`` cannot be used at ``current_version``, or None."""
    if base_version > current_version:
        return (
            f"base_version {base_version} is from the future "
            f"(the global model is at version {current_version})"
        )
    staleness = current_version - base_version
    if staleness > max_staleness:
        return (
            f"too stale: base_version {base_version} is {staleness} versions behind the global model "
            f"(version {current_version}; max_staleness {max_staleness})"
        )
    return None
