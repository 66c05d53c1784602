"""Global model states as bytes (the `flead.model.serialization` container), and a registry of the
global weights many devices share, stored once by content digest (the weights themselves travel in
`flead.federated.wire`'s container)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime

import numpy as np

from flead.federated.state import GlobalState
from flead.federated.weights import Weights
from flead.federated.wire import flat_server_state, nested_server_state
from flead.model.config import ModelConfig
from flead.model.serialization import pack, unpack

GLOBAL_FORMAT = "flead-global-state"
FORMAT_VERSION = 1


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name, array in weights.items():
        value = np.ascontiguousarray(array, dtype="<f4")
        digest.update(f"{name}:{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:32]


def global_state_to_bytes(state: GlobalState, model: ModelConfig) -> bytes:
    header = {
        "format": GLOBAL_FORMAT,
        "format_version": FORMAT_VERSION,
        "version": state.version,
        "parent_version": state.parent_version,
        "created_at": state.created_at.isoformat(),
        "architecture": model.to_dict(),
    }
    arrays = {f"w|{name}": value for name, value in state.weights.items()}
    arrays |= {f"s|{key}": value for key, value in flat_server_state(state.server_state, sep="|").items()}
    return pack(header, arrays)


def global_state_from_bytes(data: bytes) -> tuple[GlobalState, ModelConfig]:
    header, arrays = unpack(data, GLOBAL_FORMAT, (FORMAT_VERSION,))
    weights = {key[2:]: value for key, value in arrays.items() if key.startswith("w|")}
    server = {key[2:]: value for key, value in arrays.items() if key.startswith("s|")}
    state = GlobalState(
        version=int(header["version"]),
        weights=weights,
        server_state=nested_server_state(server, sep="|"),
        created_at=datetime.fromisoformat(header["created_at"]),
        parent_version=header.get("parent_version"),
    )
    return state, ModelConfig.from_dict(header["architecture"])


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
