"""The assets by stage: data (lake), stream (replay to the trainer), model (aggregation, Spark
evaluation), report; the platform's round trip; the observed long-running services."""

from flead_dagster.defs.assets.data import device_registry, labelled_benchmark, raw_intel_lab, readings_lake
from flead_dagster.defs.assets.model import global_model, global_model_evaluation
from flead_dagster.defs.assets.report import anomaly_report
from flead_dagster.defs.assets.stream import stream_replay

# The data set and model assets, in graph order (the main job materialises them step by step).
PIPELINE = [
    raw_intel_lab,
    readings_lake,
    device_registry,
    labelled_benchmark,
    stream_replay,
    global_model,
    global_model_evaluation,
    anomaly_report,
]
