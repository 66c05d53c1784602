"""Named jobs: what the schedules and sensors request, and the steps of the main job (`flead demo`),
so that every run shows in the Dagster UI under the name of what it does (not
``__ephemeral_asset_job__``); the main job also tags its runs (``flead_dagster.main_job``)."""

from dagster import AssetSelection, define_asset_job

raw_data_job = define_asset_job(
    "raw_data_job",
    selection=AssetSelection.assets("raw_intel_lab"),
    description="Fetch or generate the raw readings and parse them once (the first step of flead demo).",
)

lake_job = define_asset_job(
    "lake_job",
    selection=AssetSelection.assets("readings_lake"),
    description="Write the chosen days of the parsed readings into the day-partitioned lake.",
)

benchmark_job = define_asset_job(
    "benchmark_job",
    selection=AssetSelection.assets("device_registry", "labelled_benchmark"),
    description="The device registry and the labelled benchmark (the lake with injected anomalies).",
)

replay_job = define_asset_job(
    "replay_job",
    selection=AssetSelection.assets("stream_replay"),
    description="Replay lake days into the readings topic and wait until the stream trainer has them.",
)

global_model_job = define_asset_job(
    "global_model_job",
    selection=AssetSelection.assets("global_model"),
    description="Aggregate the pending local updates into a new global model version.",
)

evaluation_job = define_asset_job(
    "evaluation_job",
    selection=AssetSelection.assets("global_model_evaluation"),
    tags={"flead/spark": "evaluation"},  # the run queue lets one Spark evaluation run at a time
    description="Score lake days with the latest global model on Spark.",
)

report_job = define_asset_job(
    "report_job",
    selection=AssetSelection.assets("anomaly_report"),
    description="Build the anomaly report of the newest evaluation.",
)

# The main job's steps that are Dagster runs, in order.
MAIN_JOB_JOBS = (
    raw_data_job,
    lake_job,
    benchmark_job,
    replay_job,
    global_model_job,
    evaluation_job,
    report_job,
)
