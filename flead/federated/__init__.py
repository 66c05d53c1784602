"""Federated aggregation: versioned global states, validated local updates, aggregation strategies
(FedAvg, FedAvgM, FedAdam, coordinate-wise median, trimmed mean; update clipping; staleness
discounts), a FedBuff-style update buffer, and the client-side personalisation helpers.

Weights are plain ``dict[str, np.ndarray]`` (float32); nothing here depends on the model class.
"""

from flead.federated.buffer import SubmitResult, SubmitStatus, UpdateBuffer
from flead.federated.client import ClientConfig, personalise, weight_delta
from flead.federated.config import STRATEGY_NAMES, AggregationConfig
from flead.federated.result import AcceptedUpdate, AggregationResult, AggregationSummary, RefusedUpdate
from flead.federated.staleness import staleness_discount
from flead.federated.state import GlobalState
from flead.federated.strategies import (
    CoordinateMedian,
    FedAdam,
    FedAvg,
    FedAvgM,
    Strategy,
    TrimmedMean,
    make_strategy,
)
from flead.federated.update import LocalUpdate
from flead.federated.validation import PreparedUpdate, UpdateRefused, prepare_update
from flead.federated.weights import Weights, global_norm

__all__ = [
    "STRATEGY_NAMES",
    "AcceptedUpdate",
    "AggregationConfig",
    "AggregationResult",
    "AggregationSummary",
    "ClientConfig",
    "CoordinateMedian",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "GlobalState",
    "LocalUpdate",
    "PreparedUpdate",
    "RefusedUpdate",
    "Strategy",
    "SubmitResult",
    "SubmitStatus",
    "TrimmedMean",
    "UpdateBuffer",
    "UpdateRefused",
    "Weights",
    "global_norm",
    "make_strategy",
    "personalise",
    "prepare_update",
    "staleness_discount",
    "weight_delta",
]
