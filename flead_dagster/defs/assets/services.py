"""The long-running services as observable assets: the sensors that keep them running record their
state as observations (`flead_dagster.defs.sensors`)."""

from dagster import AssetSpec

from flead.local.supervisor import API, NOTIFIER, TRAINER
from flead_dagster.asset_metadata import CODE_VERSION, OWNERS


def service_asset(name: str, kinds: set[str], description: str) -> AssetSpec:
    return AssetSpec(
        name,
        group_name="services",
        kinds=kinds,
        owners=OWNERS,
        code_version=CODE_VERSION,
        description=description,
    )


service_assets = [
    service_asset(
        TRAINER,
        {"python", "kafka"},
        "The stream trainer (`flead trainer run`): consumes the readings topic, trains one detector per "
        "device, scores every reading and federates through the global API. Observed by "
        "`stream_trainer_sensor`, which keeps it running.",
    ),
    service_asset(
        API,
        {"python", "fastapi"},
        "The global model API (`flead api run`): receives local updates, aggregates them and serves "
        "every global model version. Observed by `global_api_sensor`, which keeps it running.",
    ),
    service_asset(
        NOTIFIER,
        {"python", "mongodb"},
        "The notifier (`flead alerts run`): follows the anomaly events and delivers signed webhook "
        "notifications through a MongoDB outbox (FLEAD_ALERTS_*). Observed by `notifier_sensor`, which "
        "keeps it running while webhook URLs are set.",
    ),
]
