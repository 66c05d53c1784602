"""The platform's own check: one reading through Kafka into MongoDB and back, proving the services' wiring."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from flead.roundtrip import run_round_trip
from flead_dagster.asset_metadata import flead_asset
from flead_dagster.defs.resources import FleadResource


@flead_asset(
    group_name="platform",
    kinds={"kafka", "mongodb"},
    description="One reading through Kafka (consumer group) into MongoDB and back.",
)
def platform_round_trip(context: AssetExecutionContext, flead: FleadResource) -> MaterializeResult:
    report = run_round_trip(flead.settings(), on_step=context.log.info)
    return MaterializeResult(
        metadata={
            "partition": report.partition,
            "offset": report.offset,
            "committed_offset": report.committed_offset,
            "document_id": report.document_id,
            "steps": MetadataValue.md("\n".join(f"- {what} ({secs:.3f} s)" for what, secs in report.steps)),
        }
    )
