"""Detection quality: metrics, a loader for any labelled sensor data, and the references."""

from flead.evaluation.loader import LabelledSeries, load_labelled, load_train_test, split_series
from flead.evaluation.metrics import (
    DetectionReport,
    Evaluation,
    average_precision,
    evaluate_device,
    evaluate_frame,
)
from flead.evaluation.references import REFERENCES, score_reference
from flead.evaluation.zscore import rolling_zscore

__all__ = [
    "REFERENCES",
    "DetectionReport",
    "Evaluation",
    "LabelledSeries",
    "average_precision",
    "evaluate_device",
    "evaluate_frame",
    "load_labelled",
    "load_train_test",
    "rolling_zscore",
    "score_reference",
    "split_series",
]
