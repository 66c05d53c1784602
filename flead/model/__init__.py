"""Per-device neural anomaly detection in NumPy: model, formats, online detector, thresholds."""

from flead.model.anomaly_model import MODEL_FORMAT, MODEL_FORMAT_VERSION, AnomalyModel
from flead.model.config import ModelConfig, TrainConfig
from flead.model.detector import OnlineDetector
from flead.model.thresholds import QuantileThreshold, SpotThreshold, threshold_from_state_dict

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "AnomalyModel",
    "ModelConfig",
    "OnlineDetector",
    "QuantileThreshold",
    "SpotThreshold",
    "TrainConfig",
    "threshold_from_state_dict",
]
