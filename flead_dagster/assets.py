"""Assets. Until the data and streaming assets land, one asset proves the services' wiring."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from flead.config import Settings
from flead.roundtrip import run_round_trip
from flead_dagster.asset_metadata import OWNERS
from flead_dagster.resources import KafkaResource, MongoResource


@asset(
    group_name="platform",
    kinds={"kafka", "mongodb"},
    owners=OWNERS,
    code_version="1",
    description="One reading through Kafka (consumer group) into MongoDB and back.",
)
def platform_round_trip(
    context: AssetExecutionContext, kafka: KafkaResource, mongo: MongoResource
) -> MaterializeResult:
    settings = mongo.apply(kafka.apply(Settings()))
    report = run_round_trip(settings, on_step=context.log.info)
    return MaterializeResult(
        metadata={
            "partition": report.partition,
            "offset": report.offset,
            "committed_offset": report.committed_offset,
            "document_id": report.document_id,
            "steps": MetadataValue.md("\n".join(f"- {what} ({secs:.3f} s)" for what, secs in report.steps)),
        }
    )
