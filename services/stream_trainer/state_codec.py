"""A device's keyed state as a MongoDB document and back: the detector (`OnlineDetector.to_bytes`:
network, optimiser, threshold, context), the federated client's fields, its event builder (with the
open event) and its statistics; the readings waiting for a whole chunk are checkpointed per partition
(`checkpoints`). Global weights shared by
many devices are held and stored once (`SharedWeights`) and referenced by digest. The privacy a device
spent (local DP's releases, a spent budget) is saved with it: a restart never refills a budget."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
from bson.binary import Binary

from flead.federated import ClientConfig, LocalUpdate
from flead.federated.cohort import shared_flat
from flead.federated.device import DeviceClient
from flead.federated.weights import Weights
from flead.federated.wire import (
    encode_binary_update,
    local_update,
    read_binary_update,
    weights_from_bytes,
    weights_to_bytes,
)
from flead.model.detector import OnlineDetector
from flead.privacy.config import PrivacyConfig
from services.stream_trainer.devices import DeviceSlot, PendingReadings, reading_dtype
from services.stream_trainer.events import DeviceEvents

ADOPTED, ANCHOR = "adopted", "anchor"


def slot_document(
    slot: DeviceSlot,
    *,
    state_id: str,
    owner: Mapping[str, object],
    adopted_digest: str | None,
    unsent: Sequence[LocalUpdate] = (),
) -> dict:
    client = slot.client
    return {
        "_id": state_id,
        "kind": "device",
        **owner,  # group, topic, partition, epoch, gen
        "device_id": slot.device_id,
        # bytes are stored as BSON binary (no Binary copy); shared weights are the adopted ones
        "detector": client.detector.to_bytes(weights=not client.detector.weights_shared),
        "client": {
            "weights": ADOPTED if client.detector.weights_shared else None,
            "training": client.training,
            "base_version": client.base_version,
            "epoch": client.epoch,
            "sequence": client.sequence,
            "lineage": slot.lineage,
            "proximal_mu": client.client.proximal_mu,
            "personal_mix": client.client.personal_mix,
            "adopted": adopted_digest,
            "anchor": _weights_ref(client.anchor, client, (ADOPTED,)),
            "reported": _weights_ref(client.reported, client, (ADOPTED, ANCHOR)),
            "unsent": [Binary(encode_binary_update(u)) for u in unsent],
            "privacy": {
                "released": [[z, n] for z, n in sorted(client.released.items())],  # BSON keys are text
                "budget_exhausted": client.budget_exhausted,
                "budget": client.privacy.epsilon_budget,  # what it was spent against
                "rejected_versions": client.rejected_versions,
            },
        },
        "events": None if slot.events is None else slot.events.state_dict(),  # the open event, if any
        "stats": {
            "readings": slot.readings,
            "anomalies": slot.anomalies,
            "late": slot.late,
            "last_event_us": slot.last_event_us,
            "last_score": slot.last_score,
            "last_threshold": slot.last_threshold,
        },
        "saved_at": datetime.now(UTC),
    }


def slot_from_document(
    document: Mapping,
    *,
    adopted: Callable[[str], Mapping[str, np.ndarray] | None],
    push_every: int,
    privacy: PrivacyConfig | None = None,
) -> tuple[DeviceSlot, list[LocalUpdate]]:
    """The slot and its undelivered updates. `adopted` looks shared global weights up by digest;
    `privacy`: the deployment's, which the restored device applies from now on."""
    fields = document["client"]
    shared = None
    if fields.get("weights") == ADOPTED:
        weights = None if fields["adopted"] is None else adopted(fields["adopted"])
        if weights is None:
            raise ValueError(f"global weights {fields['adopted']} of {document['device_id']} are missing")
        shared = functools.partial(shared_flat, weights)
    detector = OnlineDetector.from_bytes(bytes(document["detector"]), shared=shared)
    config = ClientConfig(proximal_mu=fields["proximal_mu"], personal_mix=fields["personal_mix"])
    client = DeviceClient(document["device_id"], detector, config, push_every=push_every, privacy=privacy)
    client.base_version = fields["base_version"]
    # a state saved before update ids had an epoch keeps the fresh one: its old ids had another form
    client.epoch = fields.get("epoch") or client.epoch
    client.sequence = fields["sequence"]
    client.training = fields.get("training", True)
    if fields["adopted"] is not None:
        client.adopted = adopted(fields["adopted"])
        if client.adopted is None:
            raise ValueError(f"global weights {fields['adopted']} of {document['device_id']} are missing")
    client.anchor = _weights_from_ref(fields["anchor"], client)
    _restore_privacy(client, fields.get("privacy") or {})  # none before DP existed
    client.reported = _weights_from_ref(fields["reported"], client)
    stats = document["stats"]
    slot = DeviceSlot(
        device_id=document["device_id"],
        partition=int(document["partition"]),
        client=client,
        # the waiting readings are in the partition's buffer documents (`checkpoints`); a document
        # saved before those holds its own
        pending=PendingReadings.from_bytes(
            bytes(document.get("pending", b"")), reading_dtype(len(detector.config.columns))
        ),
        lineage=fields["lineage"],
        readings=stats["readings"],
        anomalies=stats["anomalies"],
        late=stats["late"],
        last_event_us=stats["last_event_us"],
        last_score=stats["last_score"],
        last_threshold=stats["last_threshold"],
        state_id=document["_id"],
        events=None if document.get("events") is None else DeviceEvents.from_state_dict(document["events"]),
    )
    return slot, [local_update(*read_binary_update(bytes(b))) for b in fields.get("unsent", [])]


def _restore_privacy(client: DeviceClient, saved: Mapping) -> None:
    client.released = {float(z): int(n) for z, n in saved.get("released", [])}
    client.rejected_versions = int(saved.get("rejected_versions", 0))
    spent_against, budget = saved.get("budget"), client.privacy.epsilon_budget
    # A budget raised since lets the device try again: its own accounting (local DP) or the server's
    # next refusal marks it anew if it is still spent.
    raised = spent_against is not None and (budget is None or budget > spent_against)
    client.budget_exhausted = bool(saved.get("budget_exhausted", False)) and not raised


def _weights_ref(weights, client: DeviceClient, shared: tuple[str, ...]):
    if weights is None:
        return None
    for name in shared:
        if weights is getattr(client, name):
            return name
    return Binary(weights_to_bytes(weights))


def _weights_from_ref(ref, client: DeviceClient):
    if ref is None:
        return None
    if isinstance(ref, str):
        return getattr(client, ref)
    return weights_from_bytes(bytes(ref))


class SharedWeights:
    """Read-only global weights by digest. Devices that adopted the same version hold the same arrays,
    in memory and in the checkpoint (one document per digest)."""

    def __init__(self) -> None:
        self._by_digest: dict[str, Weights] = {}
        self._digest_by_id: dict[int, tuple[Weights, str]] = {}  # keeps the object alive: ids stay unique

    def digest_of(self, weights: Mapping[str, np.ndarray]) -> str:
        known = self._digest_by_id.get(id(weights))
        if known is not None and known[0] is weights:
            return known[1]
        digest = weights_digest(weights)
        self._by_digest.setdefault(digest, weights)  # type: ignore[arg-type]
        self._digest_by_id[id(weights)] = (weights, digest)  # type: ignore[assignment]
        return digest

    def get(self, digest: str) -> Weights | None:
        return self._by_digest.get(digest)

    def add(self, digest: str, weights: Weights) -> Weights:
        """Register weights read back from a checkpoint; returns the shared copy."""
        for array in weights.values():
            array.flags.writeable = False
        shared = self._by_digest.setdefault(digest, weights)
        self._digest_by_id[id(shared)] = (shared, digest)
        return shared

    def retain(self, in_use: set[int]) -> None:
        """Forget the weights no device holds any more (`in_use`: ids of the adopted dicts)."""
        self._digest_by_id = {key: value for key, value in self._digest_by_id.items() if key in in_use}
        kept = {digest for _, digest in self._digest_by_id.values()}
        self._by_digest = {digest: w for digest, w in self._by_digest.items() if digest in kept}


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name, array in weights.items():
        value = np.ascontiguousarray(array, dtype="<f4")
        digest.update(f"{name}:{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:32]
