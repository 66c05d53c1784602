"""What the stream trainer runs with, beyond `flead.config.Settings` (which holds every address, topic,
collection and cadence, and the exchange devices federate through): the model for new devices, how
it trains, and the service's own knobs. Each knob is in one of the two."""

from __future__ import annotations

from dataclasses import dataclass, field

from flead.model.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class TrainerOptions:
    """``model`` is the architecture of the global model the local exchange starts from (with the HTTP
    exchange the API's model decides); ``train`` how every device trains and judges (``batch_size``
    is also the scoring quantum, see `devices.DeviceSlot`).

    ``flush_idle_s``: readings that wait in a device's buffer for a full chunk are scored anyway once
    they have waited this long *and* their partition is caught up (no lag), so a slow device still
    gets timely scores while a backlog is always processed in whole chunks.
    """

    model: ModelConfig | None = None  # None: `model_for_fleet` of the settings' fleet schema
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    name: str = "stream-trainer"
    flush_idle_s: float = 5.0
    poll_timeout_ms: int = 500
    heartbeat_s: float = 5.0
    global_poll_s: float = 5.0  # HTTP exchange: how often to ask the API for a newer global model
    http_timeout_s: float = 5.0  # HTTP exchange: per request
    outbox_limit: int = 10_000  # HTTP exchange: unsent updates kept; the oldest are dropped (counted)
    stop_grace_s: float = 30.0  # how long the final checkpoint (SIGTERM) keeps retrying
    revoke_grace_s: float = 20.0  # how long a checkpoint on partition revocation keeps retrying

    def __post_init__(self) -> None:
        if self.flush_idle_s < 0 or self.poll_timeout_ms < 1 or self.heartbeat_s <= 0:
            raise ValueError("flush_idle_s must be >= 0, poll_timeout_ms >= 1 and heartbeat_s > 0")
