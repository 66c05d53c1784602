"""The shareable model: architecture, feature list, normaliser state and weights, and its formats."""

from __future__ import annotations

import json

import numpy as np

from flead.model.config import ModelConfig
from flead.model.network import Network
from flead.model.normalizer import RunningNormalizer
from flead.model.serialization import check_header, nested_lists, pack, unpack

MODEL_FORMAT = "flead-model"
MODEL_FORMAT_VERSION = 1


class AnomalyModel:
    """What devices exchange with the global model service: a network and how to read its inputs.

    Weights are float32 and named ``<layer>.W`` (fan_in x fan_out) and ``<layer>.b``, with layers
    ``net.0 .. net.k`` for a forecaster and ``enc.0 .. enc.k, dec.0 .. dec.k`` for an autoencoder.
    `n_samples_seen` counts the readings learned since `reset_sample_counter()`: the weight of this
    model's update in federated averaging; `loss_sum` adds up their training loss (each batch's loss
    before its step, times the readings it learned), so `mean_loss` is what the update reports.
    """

    def __init__(self, config: ModelConfig | None = None, seed: int = 0) -> None:
        self.config = config or ModelConfig()
        self.network = Network(self.config.layers(), self.config.activation)
        self.network.initialise(seed)
        self.normalizer = RunningNormalizer(self.config.n_columns, self.config.min_std)
        self.n_samples_seen = 0
        self.loss_sum = 0.0
        self.metadata: dict = {}

    @property
    def features(self) -> tuple[str, ...]:
        return self.config.features

    # -------------------------------------------------------------------------------- weights

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the weights by name, float32, in layer order."""
        return self.network.get_weights()

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Adopt `weights` (e.g. the global model's); the normaliser stays this device's own."""
        self.network.set_weights(weights)

    @property
    def mean_loss(self) -> float | None:
        """The mean training loss per reading learned since the counter was reset (None: none learned)."""
        return self.loss_sum / self.n_samples_seen if self.n_samples_seen else None

    def reset_sample_counter(self) -> None:
        self.n_samples_seen = 0
        self.loss_sum = 0.0

    # -------------------------------------------------------------------------------- formats

    def _header(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "architecture": {k: v for k, v in self.config.to_dict().items() if k != "features"},
            "layers": [
                {"name": name, "in": fan_in, "out": fan_out} for name, fan_in, fan_out in self.config.layers()
            ],
            "features": list(self.config.features),
            "normalizer": self.normalizer.state_dict(),
            "n_samples_seen": self.n_samples_seen,
            "loss_sum": self.loss_sum,
            "metadata": self.metadata,
        }

    def to_bytes(self) -> bytes:
        """The binary form (see `flead.model.serialization`)."""
        return pack(self._header(), self.network.params)

    @classmethod
    def from_bytes(cls, data: bytes) -> AnomalyModel:
        header, arrays = unpack(data, MODEL_FORMAT, (MODEL_FORMAT_VERSION,))
        return cls._from_parts(header, arrays, [entry["name"] for entry in header["arrays"]])

    def to_json_dict(self) -> dict:
        """The JSON form: the same header, arrays as nested lists under ``weights`` (in layout order)."""
        params = self.network.params
        layout = [{"name": name, "shape": list(value.shape)} for name, value in params.items()]
        return {
            **self._header(),
            "dtype": "float32",
            "arrays": layout,
            "weights": {name: nested_lists(value) for name, value in params.items()},
        }

    @classmethod
    def from_json_dict(cls, data: dict) -> AnomalyModel:
        check_header(data, MODEL_FORMAT, (MODEL_FORMAT_VERSION,))
        if data.get("dtype") != "float32" or not isinstance(data.get("weights"), dict):
            raise ValueError("a JSON model needs dtype 'float32' and a 'weights' object")
        try:
            arrays = {name: np.asarray(value, dtype=np.float64) for name, value in data["weights"].items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"weights must be nested lists of numbers: {exc}") from exc
        for name, value in arrays.items():
            if np.any(value != value.astype(np.float32)):
                raise ValueError(f"weight {name!r} holds values that are not float32")
        return cls._from_parts(data, {k: v.astype(np.float32) for k, v in arrays.items()}, None)

    @classmethod
    def _from_parts(
        cls, header: dict, arrays: dict[str, np.ndarray] | None, order: list[str] | None
    ) -> AnomalyModel:
        """A model from a parsed header and its arrays (None: the weights come later, e.g. shared);
        `order`, if given, must be the layout's."""
        try:
            architecture = dict(header["architecture"])
            architecture["features"] = header["features"]
            config = ModelConfig.from_dict(architecture)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the header lacks a valid architecture: {exc!r}") from exc
        model = cls(config)
        layers = [{"name": name, "in": fan_in, "out": fan_out} for name, fan_in, fan_out in config.layers()]
        if header.get("layers", layers) != layers:
            raise ValueError(f"layers {header.get('layers')} do not match the architecture's {layers}")
        expected = list(model.network.shapes)
        if order is not None and order != expected:
            raise ValueError(f"arrays {order} do not match the architecture's {expected}")
        if arrays is not None:
            model.set_weights(arrays)
        model.normalizer = RunningNormalizer.from_state_dict(header.get("normalizer") or {}, config.n_columns)
        samples = header.get("n_samples_seen", 0)
        if not isinstance(samples, int) or samples < 0:
            raise ValueError(f"n_samples_seen must be an integer >= 0, got {samples!r}")
        model.n_samples_seen = samples
        loss_sum = header.get("loss_sum", 0.0)  # absent from models saved before the loss was kept
        if not isinstance(loss_sum, int | float) or isinstance(loss_sum, bool) or not loss_sum >= 0:
            raise ValueError(f"loss_sum must be a number >= 0, got {loss_sum!r}")
        model.loss_sum = float(loss_sum)
        metadata = header.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be a JSON object")
        model.metadata = json.loads(json.dumps(metadata))
        return model
