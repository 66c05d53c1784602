"""Detection quality: metrics, a loader for any labelled sensor data, and the z-score baseline."""

from flead.evaluation.loader import LabelledSeries, load_labelled, split_series
from flead.evaluation.metrics import (
    DetectionReport,
    Evaluation,
    average_precision,
    evaluate_device,
    evaluate_frame,
)
from flead.evaluation.zscore import rolling_zscore

__all__ = [
    "DetectionReport",
    "Evaluation",
    "LabelledSeries",
    "average_precision",
    "evaluate_device",
    "evaluate_frame",
    "load_labelled",
    "rolling_zscore",
    "split_series",
]
