"""Named jobs: what the schedules and sensors request, and the steps of the main job (`flead demo`),
so that every run shows in the Dagster UI under the name of what it does (not
``__ephemeral_asset_job__``); the main job also tags its runs (``flead_dagster.main_job``)."""

from dagster import AssetSelection, define_asset_job


def asset_job(name: str, assets: tuple[str, ...], description: str, tags: dict[str, str] | None = None):
    return define_asset_job(
        name, selection=AssetSelection.assets(*assets), description=description, tags=tags
    )


raw_data_job = asset_job(
    "raw_data_job",
    ("raw_intel_lab",),
    "Fetch or generate the raw readings and parse them once (the first step of flead demo).",
)
lake_job = asset_job(
    "lake_job",
    ("readings_lake",),
    "Write the chosen days of the parsed readings into the day-partitioned lake.",
)
benchmark_job = asset_job(
    "benchmark_job",
    ("device_registry", "labelled_benchmark"),
    "The device registry and the labelled benchmark (the lake with injected anomalies).",
)
replay_job = asset_job(
    "replay_job",
    ("stream_replay",),
    "Replay lake days into the readings topic and wait until the stream trainer has them.",
)
global_model_job = asset_job(
    "global_model_job",
    ("global_model",),
    "Aggregate the pending local updates into a new global model version.",
)
evaluation_job = asset_job(
    "evaluation_job",
    ("global_model_evaluation",),
    "Score lake days with the latest global model on Spark.",
    tags={"flead/spark": "evaluation"},  # the run queue lets one Spark evaluation run at a time
)
report_job = asset_job(
    "report_job", ("anomaly_report",), "Build the anomaly report of the newest evaluation."
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
