"""`flead trainer ...`: the stream trainer service; its defaults are `TrainerOptions`' own."""

from __future__ import annotations

import gc
import logging
from typing import get_args

import typer
from kafka.errors import KafkaError
from pymongo.errors import PyMongoError

from flead.cli.output import fail
from flead.config import Settings, load_settings_or_exit
from flead.model.config import TrainConfig, model_for_fleet
from services.stream_trainer.options import TrainerOptions

trainer_app = typer.Typer(help="The stream trainer: per-device online detectors on the readings topic.")
DEFAULTS = TrainerOptions()
EXCHANGES = get_args(Settings.model_fields["trainer_exchange"].annotation)


@trainer_app.command("run")
def run(
    exchange: str = typer.Option(
        None,
        help="Where devices federate: 'local' (an in-process buffer) or 'http' (the global model API).",
        show_default="FLEAD_TRAINER_EXCHANGE, else local",
    ),
    window: int = typer.Option(
        None, min=1, help="Model window for the local exchange (default: the model's)."
    ),
    hidden: str = typer.Option(None, help="Hidden layer sizes, e.g. 64,8 (local exchange)."),
    warmup: int = typer.Option(
        None, min=0, help="Readings a device learns before its scores calibrate its own threshold."
    ),
    chunk: int = typer.Option(None, min=1, help="Readings per training step and scoring quantum."),
    freeze_reference: bool = typer.Option(
        False, help="Freeze a device's normaliser once calibrated: a lasting fault stays flagged."
    ),
    seed: int = typer.Option(DEFAULTS.seed, help="Seed of the initial model."),
    flush_idle: float = typer.Option(
        DEFAULTS.flush_idle_s, min=0.0, help="Seconds a partial chunk waits once its partition is caught up."
    ),
    name: str = typer.Option(DEFAULTS.name, help="Service name in the heartbeat and /health."),
    heartbeat: float = typer.Option(
        DEFAULTS.heartbeat_s, min=0.1, help="Seconds between heartbeat documents."
    ),
    log_level: str = typer.Option("INFO", envvar="FLEAD_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Consume the readings topic as a member of the trainer's consumer group until SIGTERM."""
    from services.stream_trainer.service import StreamTrainer  # the service's imports: when it runs

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    train = DEFAULTS.train
    try:
        settings = load_settings_or_exit()  # also for `python -m services.stream_trainer`
        if exchange is not None:  # the one place of the choice stays the settings
            if exchange not in EXCHANGES:
                raise ValueError(f"--exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}")
            settings = settings.model_copy(update={"trainer_exchange": exchange})
        model = model_for_fleet(settings.fleet)
        if window is not None or hidden is not None:
            sizes = tuple(int(h) for h in hidden.split(",")) if hidden else model.hidden
            model = model_for_fleet(settings.fleet, window=window or model.window, hidden=sizes)
        if warmup is not None or chunk is not None or freeze_reference:
            train = TrainConfig(
                warmup=train.warmup if warmup is None else warmup,
                batch_size=train.batch_size if chunk is None else chunk,
                freeze_reference=freeze_reference,
            )
        options = TrainerOptions(
            model=model,
            train=train,
            seed=seed,
            name=name,
            flush_idle_s=flush_idle,
            heartbeat_s=heartbeat,
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    # The process is the trainer's. What is loaded now lives as long as it: keep it out of the garbage
    # collector's full passes, which otherwise rescan every imported object every few polls (~7 % of
    # the time), and collect young objects per poll-sized batch rather than every 700 allocations.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        code = StreamTrainer(settings, options).run()
    except KafkaError as exc:
        raise fail(f"Kafka: {exc}. Is the broker up? `flead local status`") from None
    except PyMongoError as exc:  # only when stopped while MongoDB was unreachable at start-up
        raise fail(f"MongoDB: {exc}. Is it up? `flead local status`") from None
    raise typer.Exit(code)
