"""Jobs the schedules and sensors request."""

from dagster import AssetSelection, define_asset_job

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
