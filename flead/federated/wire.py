"""Local updates and weights as they travel: one definition for the global model API, its clients and the
stream trainer (which sends updates to the API and keeps undelivered ones in its checkpoints).

JSON (``Content-Type: application/json``)::

    {"device_id": "mote-01", "update_id": "mote-01:17", "base_version": 3, "n_samples": 1024,
     "kind": "delta", "metrics": {"loss": 0.12}, "arrays": {"enc.0.W": [[...], ...], "enc.0.b": [...]},
     "privacy": {"mechanism": "gaussian", "clip_norm": 1.0, "noise_multiplier": 1.1}}  # local DP only

Binary (``Content-Type: application/octet-stream``): ``flead.model.serialization.pack(header, arrays)``
with ``header = {"format": "flead-update", "format_version": 1, <the fields above but arrays>}``.

A batch of updates (``POST /api/local-updates``): JSON ``{"updates": [<update>, ...]}``, or binary
``encode_binary_updates``: ``FLEADUB1``, a count, then each update's container after its length.

A global model version (`GlobalState`) is stored as document fields (`global_state_fields`, read back by
`global_state_from_fields`): the weights (``flead-weights``) and the server optimiser's state
(``flead-server-state``, absent for the stateless strategies) as containers, ``created_at`` and
``parent_version`` as values. One form for the global model API's versions and the stream trainer's
checkpoint of its in-process exchange; `read_legacy_global_state` reads what trainers wrote before
(one ``flead-global-state`` container).

Arrays carry the global model's names and shapes (``AnomalyModel.get_weights()``), float32 values (JSON
numbers in nested lists, exact). Decoding here checks the container only: a receiver that does not
trust the sender validates the fields (the API: ``services.global_api.codec``) and the arrays
(``flead.federated.prepare_update``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.federated.weights import Weights
from flead.model.serialization import nested_lists, pack, unpack

UPDATE_FORMAT = "flead-update"
UPDATE_FORMAT_VERSION = 1
WEIGHTS_FORMAT = "flead-weights"
WEIGHTS_FORMAT_VERSION = 1
SERVER_STATE_FORMAT = "flead-server-state"
SERVER_STATE_FORMAT_VERSION = 1
BATCH_MAGIC = b"FLEADUB1"  # a batch of binary updates (`encode_binary_updates`)
_U32 = struct.Struct(">I")
BATCH_OVERHEAD = len(BATCH_MAGIC) + _U32.size  # and _U32.size more per update

LEGACY_GLOBAL_FORMAT = "flead-global-state"  # the stream trainer's checkpoints before one form
CONTAINER_FIELDS = ("format", "format_version", "dtype", "arrays")


def update_fields(update: LocalUpdate) -> dict[str, Any]:
    """Everything in an update but its arrays, as JSON values (``privacy`` only when declared)."""
    fields = {
        "device_id": update.device_id,
        "update_id": update.update_id,
        "base_version": int(update.base_version),
        "n_samples": int(update.n_samples),
        "kind": update.kind,
        "metrics": {name: float(value) for name, value in update.metrics.items()},
    }
    if update.privacy is not None:
        fields["privacy"] = dict(update.privacy)
    return fields


def encode_json_update(update: LocalUpdate) -> dict[str, Any]:
    """The JSON body of `update`."""
    return {
        **update_fields(update),
        "arrays": {name: nested_lists(value) for name, value in update.arrays.items()},
    }


def encode_binary_update(update: LocalUpdate) -> bytes:
    """The binary container of `update`."""
    header = {"format": UPDATE_FORMAT, "format_version": UPDATE_FORMAT_VERSION, **update_fields(update)}
    return pack(header, {name: np.asarray(value) for name, value in update.arrays.items()})


def encode_binary_updates(updates: Iterable[LocalUpdate]) -> bytes:
    """A batch of binary updates: ``BATCH_MAGIC``, their count, then each container after its length
    (unsigned 32-bit big-endian integers)."""
    return frame_binary_updates([encode_binary_update(update) for update in updates])


def frame_binary_updates(containers: list[bytes]) -> bytes:
    """`encode_binary_updates` of updates encoded already (`encode_binary_update`)."""
    parts = [BATCH_MAGIC, _U32.pack(len(containers))]
    for container in containers:
        parts += [_U32.pack(len(container)), container]
    return b"".join(parts)


def batch_count(data: bytes) -> int:
    """How many updates a binary batch announces; ValueError if it does not start like one."""
    if len(data) < len(BATCH_MAGIC) + _U32.size or not data.startswith(BATCH_MAGIC):
        raise ValueError("not a flead-updates batch (bad magic bytes or too short)")
    return _U32.unpack_from(data, len(BATCH_MAGIC))[0]


def split_binary_updates(data: bytes) -> list[bytes]:
    """The containers of a binary batch, undecoded; ValueError when the framing is broken."""
    count = batch_count(data)
    containers, offset = [], len(BATCH_MAGIC) + _U32.size
    for index in range(count):
        if offset + _U32.size > len(data):
            raise ValueError(f"batch truncated before update {index} of {count}")
        (length,) = _U32.unpack_from(data, offset)
        offset += _U32.size
        if offset + length > len(data):
            raise ValueError(f"batch truncated inside update {index} of {count}")
        containers.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise ValueError(f"batch has {len(data) - offset} trailing bytes after its {count} updates")
    return containers


def read_binary_update(data: bytes) -> tuple[dict[str, Any], Weights]:
    """(the fields, unchecked; the arrays, float32) of a binary update; ValueError if it is not one."""
    header, arrays = unpack(data, UPDATE_FORMAT, (UPDATE_FORMAT_VERSION,))
    return {key: value for key, value in header.items() if key not in CONTAINER_FIELDS}, arrays


def local_update(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> LocalUpdate:
    return LocalUpdate(
        device_id=fields["device_id"],
        update_id=fields["update_id"],
        base_version=fields["base_version"],
        n_samples=fields["n_samples"],
        arrays=dict(arrays),
        kind=fields.get("kind", "delta"),
        metrics=dict(fields.get("metrics") or {}),
        privacy=dict(fields["privacy"]) if fields.get("privacy") is not None else None,
    )


def weights_to_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    return pack({"format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION}, dict(weights))


def weights_from_bytes(data: bytes) -> Weights:
    _, arrays = unpack(data, WEIGHTS_FORMAT, (WEIGHTS_FORMAT_VERSION,))
    return arrays


def flat_server_state(
    server_state: Mapping[str, Mapping[str, np.ndarray]], sep: str = "/"
) -> dict[str, np.ndarray]:
    """A server optimiser's state (kind -> name -> array) as one mapping keyed ``<kind><sep><name>``."""
    return {
        f"{kind}{sep}{name}": array for kind, arrays in server_state.items() for name, array in arrays.items()
    }


def nested_server_state(flat: Mapping[str, np.ndarray], sep: str = "/") -> dict[str, dict[str, np.ndarray]]:
    """The inverse of `flat_server_state`."""
    nested: dict[str, dict[str, np.ndarray]] = {}
    for key, array in flat.items():
        kind, _, name = key.partition(sep)
        nested.setdefault(kind, {})[name] = array
    return nested


def global_state_fields(state: GlobalState) -> dict[str, Any]:
    """A global state's fields for a MongoDB document (bytes are stored as BSON binary); its version
    is the caller's to store (the API's ``_id``, the trainer's ``version``)."""
    flat = flat_server_state(state.server_state)
    header = {"format": SERVER_STATE_FORMAT, "format_version": SERVER_STATE_FORMAT_VERSION}
    return {
        "parent_version": state.parent_version,
        "created_at": state.created_at,
        "weights": weights_to_bytes(state.weights),
        "server_state": pack(header, flat) if flat else None,
    }


def global_state_from_fields(version: int, fields: Mapping[str, Any]) -> GlobalState:
    """The inverse of `global_state_fields` (a time read back without a zone is UTC)."""
    server_state = {}
    if fields.get("server_state"):
        _, flat = unpack(bytes(fields["server_state"]), SERVER_STATE_FORMAT, (SERVER_STATE_FORMAT_VERSION,))
        server_state = nested_server_state(flat)
    created_at = fields["created_at"]
    return GlobalState(
        version=int(version),
        weights=weights_from_bytes(bytes(fields["weights"])),
        server_state=server_state,
        created_at=created_at.replace(tzinfo=UTC)
        if created_at.tzinfo is None
        else created_at.astimezone(UTC),
        parent_version=fields.get("parent_version"),
    )


def read_legacy_global_state(data: bytes) -> tuple[GlobalState, dict[str, Any]]:
    """(the state, its architecture as `ModelConfig.to_dict`) of a ``flead-global-state`` container,
    the form trainers' checkpoints kept their in-process global model in before `global_state_fields`."""
    header, arrays = unpack(data, LEGACY_GLOBAL_FORMAT, (1,))
    weights = {key[2:]: value for key, value in arrays.items() if key.startswith("w|")}
    server = {key[2:]: value for key, value in arrays.items() if key.startswith("s|")}
    state = GlobalState(
        version=int(header["version"]),
        weights=weights,
        server_state=nested_server_state(server, sep="|"),
        created_at=datetime.fromisoformat(header["created_at"]),
        parent_version=header.get("parent_version"),
    )
    return state, header["architecture"]
