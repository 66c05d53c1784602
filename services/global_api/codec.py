"""The local-update wire formats, both decoded into a ``flead.federated.LocalUpdate``.

JSON (``Content-Type: application/json``)::

    {"device_id": "mote-01", "update_id": "mote-01-17", "base_version": 3, "n_samples": 1024,
     "kind": "delta", "arrays": {"enc.0.W": [[...], ...], "enc.0.b": [...], ...},
     "metrics": {"loss": 0.12}}

Binary (``Content-Type: application/octet-stream``): ``flead.model.serialization.pack(header, arrays)``
with ``header = {"format": "flead-update", "format_version": 1, <the fields above but arrays>}``.

Arrays carry the global model's names and shapes (``AnomalyModel.get_weights()``), float32 values
(JSON numbers, in nested lists). Decoding checks the envelope only (types, ranges, rectangular numeric
arrays); whether the arrays fit the current model is ``flead.federated.prepare_update``'s job.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from flead.federated import LocalUpdate
from flead.model.serialization import nested_lists, pack, unpack

UPDATE_FORMAT = "flead-update"
UPDATE_FORMAT_VERSION = 1
CONTAINER_FIELDS = ("format", "format_version", "dtype", "arrays")

# Device and update ids: printable, no spaces, at most 128 characters (e.g. mote-01, mote-01:17, a uuid).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}$"
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
MAX_METRICS = 32
MAX_BASE_VERSION = 2**31 - 1
MAX_SAMPLES = 10**12

MetricName = Annotated[str, Field(pattern=METRIC_NAME_PATTERN)]


class UpdateFormatError(ValueError):
    """The request body is not a well-formed local update; the message says what is wrong."""


class UpdateFields(BaseModel):
    """Everything in a local update but its arrays (the binary container's header)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=ID_PATTERN, description="The device the update was trained on.")
    update_id: str = Field(
        pattern=ID_PATTERN, description="Unique per device; resubmitting the same id is a no-op."
    )
    base_version: StrictInt = Field(
        ge=0, le=MAX_BASE_VERSION, description="The global version the device trained from."
    )
    n_samples: StrictInt = Field(ge=1, le=MAX_SAMPLES, description="Samples learned for this update.")
    kind: Literal["delta", "weights"] = Field(
        "delta", description="delta: the change since the last push; weights: full weights."
    )
    metrics: dict[MetricName, float] = Field(
        default_factory=dict, max_length=MAX_METRICS, description="Training metrics, e.g. {'loss': 0.12}."
    )


class UpdateBody(UpdateFields):
    """The JSON form of a local update."""

    arrays: dict[str, list[Any]] = Field(
        description="Array name -> nested lists of float32 values, the global model's names and shapes."
    )


def decode_json_update(body: bytes) -> LocalUpdate:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UpdateFormatError(f"the body is not valid JSON: {_short(exc)}") from None
    parsed = _validated(UpdateBody, data)
    arrays = {name: numeric_array(name, value) for name, value in parsed.arrays.items()}
    return _local_update(parsed, arrays)


def decode_binary_update(body: bytes) -> LocalUpdate:
    try:
        header, arrays = unpack(body, UPDATE_FORMAT, (UPDATE_FORMAT_VERSION,))
    except ValueError as exc:
        raise UpdateFormatError(f"not a valid {UPDATE_FORMAT} container: {exc}") from None
    fields = {key: value for key, value in header.items() if key not in CONTAINER_FIELDS}
    return _local_update(_validated(UpdateFields, fields), arrays)


def numeric_array(name: str, value: Any) -> np.ndarray:
    """A rectangular nested list of numbers as float64; anything else (strings, booleans, nulls,
    ragged lists, integers too big for int64) is refused."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise UpdateFormatError(f"array {name!r} is not a rectangular nested list: {_short(exc)}") from None
    if array.dtype.kind not in "iuf":
        raise UpdateFormatError(f"array {name!r} must hold numbers only (found {_describe(array.dtype)})")
    return array.astype(np.float64)


def encode_json_update(update: LocalUpdate) -> dict:
    """The JSON body for ``update`` (what a device or the stream trainer sends)."""
    return {
        **_header_fields(update),
        "arrays": {name: nested_lists(value) for name, value in update.arrays.items()},
    }


def encode_binary_update(update: LocalUpdate) -> bytes:
    """The ``application/octet-stream`` body for ``update``."""
    header = {"format": UPDATE_FORMAT, "format_version": UPDATE_FORMAT_VERSION, **_header_fields(update)}
    return pack(header, {name: np.asarray(value) for name, value in update.arrays.items()})


def _header_fields(update: LocalUpdate) -> dict:
    return {
        "device_id": update.device_id,
        "update_id": update.update_id,
        "base_version": int(update.base_version),
        "n_samples": int(update.n_samples),
        "kind": update.kind,
        "metrics": {name: float(value) for name, value in update.metrics.items()},
    }


def _local_update(fields: UpdateFields, arrays: dict[str, np.ndarray]) -> LocalUpdate:
    return LocalUpdate(
        device_id=fields.device_id,
        update_id=fields.update_id,
        base_version=fields.base_version,
        n_samples=fields.n_samples,
        arrays=arrays,
        kind=fields.kind,
        metrics=dict(fields.metrics),
    )


def _validated(model: type[UpdateFields], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UpdateFormatError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """One line per problem, e.g. ``n_samples: Input should be greater than or equal to 1``."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "invalid local update: " + "; ".join(problems[:10])


def _describe(dtype: np.dtype) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "O": "nulls, objects or huge integers"}.get(
        dtype.kind, str(dtype)
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
