"""Devices and the global model: create a device from the current global version, and after each
scored chunk push its update every ``push_every`` samples and adopt a newer global version (pushing
what it learned first, as `flead.federated.client` prescribes)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from flead.config import Settings
from flead.federated import GlobalState
from flead.federated.device import DeviceClient
from flead.model.detector import OnlineDetector
from services.stream_trainer.exchange import ModelExchange
from services.stream_trainer.health import Counters
from services.stream_trainer.options import TrainerOptions
from services.stream_trainer.pending import PendingReadings, reading_dtype
from services.stream_trainer.slot import DeviceSlot, ScoredChunk

log = logging.getLogger(__name__)


class Federation:
    def __init__(
        self, settings: Settings, options: TrainerOptions, exchange: ModelExchange, counters: Counters
    ) -> None:
        self.settings, self.options, self.exchange, self.counters = settings, options, exchange, counters

    @property
    def columns(self) -> tuple[str, ...]:
        """What the global model reads of each reading: its features, then its inputs."""
        return self.exchange.model_config.columns

    def new_slot(self, device_id: str, partition: int) -> DeviceSlot:
        config = self.exchange.model_config
        detector = OnlineDetector(config, train=self.options.train, seed=self.options.seed)
        client = DeviceClient(
            device_id, detector, self.exchange.client_config, push_every=self.settings.trainer_push_every
        )
        slot = DeviceSlot(device_id, partition, client, PendingReadings(reading_dtype(len(config.columns))))
        state = self.exchange.latest(None)
        if state is not None:
            self.adopt(slot, state)
        self.counters.add("devices_created")
        return slot

    def after_scoring(self, slot: DeviceSlot, chunk: ScoredChunk) -> None:
        same_lineage = slot.lineage == self.exchange.lineage
        state = self.exchange.latest(slot.client.base_version if same_lineage else None)
        update = slot.client.take_update(force=state is not None) if same_lineage else None
        if update is not None:
            finite = chunk.score[np.isfinite(chunk.score)]
            metrics = {
                **update.metrics,  # the training loss
                "mean_score": float(finite.mean()) if finite.size else 0.0,
                "anomaly_rate": float(chunk.is_anomaly.mean()) if len(chunk.is_anomaly) else 0.0,
            }
            self.exchange.push(dataclasses.replace(update, metrics=metrics))
            self.counters.add("updates_pushed")
        if state is not None:
            self.adopt(slot, state)

    def adopt(self, slot: DeviceSlot, state: GlobalState) -> None:
        client = slot.client
        client.client = self.exchange.client_config
        try:
            client.adopt(state)
        except ValueError as exc:  # e.g. a restored device of another architecture
            self.counters.add("adoption_errors")
            log.error("device %s cannot adopt global version %d: %s", slot.device_id, state.version, exc)
            return
        slot.lineage = self.exchange.lineage
        self.counters.add("adoptions")
