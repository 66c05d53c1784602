"""The local-update request bodies, validated: both wire formats (`flead.federated.wire`) decoded into a
``flead.federated.LocalUpdate``.

Decoding checks the envelope only (types, ranges, rectangular numeric arrays); whether the arrays fit
the current model is ``flead.federated.prepare_update``'s job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from flead.federated import LocalUpdate
from flead.federated.wire import (
    UPDATE_FORMAT,
    batch_count,
    local_update,
    read_binary_update,
    split_binary_updates,
)
from flead.federated.wire import encode_binary_update as encode_binary_update  # for the API's clients
from flead.federated.wire import encode_binary_updates as encode_binary_updates
from flead.federated.wire import encode_json_update as encode_json_update
from flead.schema import DEVICE_ID_PATTERN

# Update and request ids: printable, no spaces, at most 128 characters (e.g. mote-01:1f2e3d4c:17, a uuid).
# Device ids are `flead.schema.DEVICE_ID_PATTERN`, the same as on Kafka.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}$"
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
MAX_METRICS = 32
MAX_BASE_VERSION = 2**31 - 1
MAX_SAMPLES = 10**12

MetricName = Annotated[str, Field(pattern=METRIC_NAME_PATTERN)]


class UpdateFormatError(ValueError):
    """The request body is not a well-formed local update; the message says what is wrong."""


class UpdatePrivacy(BaseModel):
    """The local differential privacy a device applied (`flead.privacy.PrivacyDeclaration`); whether it
    meets the deployment's requirement is checked against the current configuration, with the reason."""

    model_config = ConfigDict(extra="forbid")

    mechanism: str = Field("gaussian", max_length=32, description="`gaussian`.")
    clip_norm: float = Field(allow_inf_nan=False, description="L2 norm the update was clipped to.")
    noise_multiplier: float = Field(
        allow_inf_nan=False, description="Gaussian noise standard deviation over the clip norm."
    )


class UpdateFields(BaseModel):
    """Everything in a local update but its arrays (the binary container's header)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="The device the update was trained on.")
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
    privacy: UpdatePrivacy | None = Field(
        None, description="Local DP only: the clipping and noise applied on the device (required then)."
    )


class UpdateBody(UpdateFields):
    """The JSON form of a local update."""

    arrays: dict[str, list[Any]] = Field(
        description="Array name -> nested lists of float32 values, the global model's names and shapes."
    )


class BatchTooLarge(ValueError):
    """A batch holds more updates than the limit (answered 413)."""


@dataclass(frozen=True)
class BatchItem:
    """One update of a batch: decoded, or the reason it could not be (with its ids when readable)."""

    index: int
    update: LocalUpdate | None
    device_id: str | None = None
    update_id: str | None = None
    error: str | None = None


def decode_json_update(body: bytes) -> LocalUpdate:
    return _json_update(_json(body))


def decode_binary_update(body: bytes) -> LocalUpdate:
    try:
        fields, arrays = read_binary_update(body)
    except ValueError as exc:
        raise UpdateFormatError(f"not a valid {UPDATE_FORMAT} container: {exc}") from None
    return _local_update(_validated(UpdateFields, fields), arrays)


def decode_json_updates(body: bytes, max_updates: int) -> list[BatchItem]:
    """``{"updates": [<update>, ...]}``, each decoded on its own. ``UpdateFormatError`` when the envelope
    is malformed, ``BatchTooLarge`` over ``max_updates``."""
    data = _json(body)
    if not isinstance(data, dict) or set(data) != {"updates"} or not isinstance(data["updates"], list):
        raise UpdateFormatError('a batch must be a JSON object {"updates": [<update>, ...]} and nothing else')
    _check_count(len(data["updates"]), max_updates)
    return [_item(i, item, _json_update) for i, item in enumerate(data["updates"])]


def decode_binary_updates(body: bytes, max_updates: int) -> list[BatchItem]:
    """`flead.federated.wire.encode_binary_updates`, each container decoded on its own."""
    try:
        _check_count(batch_count(body), max_updates)
        containers = split_binary_updates(body)
    except BatchTooLarge:
        raise
    except ValueError as exc:
        raise UpdateFormatError(f"not a valid batch of {UPDATE_FORMAT} containers: {exc}") from None
    return [_item(i, container, decode_binary_update) for i, container in enumerate(containers)]


def _check_count(count: int, max_updates: int) -> None:
    if count > max_updates:
        raise BatchTooLarge(f"the batch holds {count} updates, over the limit of {max_updates} per request")
    if count == 0:
        raise UpdateFormatError("the batch holds no update")


def _item(index: int, raw: Any, decode: Callable[[Any], LocalUpdate]) -> BatchItem:
    try:
        update = decode(raw)
    except UpdateFormatError as exc:
        device_id, update_id = _ids(raw)
        return BatchItem(index, None, device_id, update_id, str(exc))
    return BatchItem(index, update, update.device_id, update.update_id)


def _ids(raw: Any) -> tuple[str | None, str | None]:
    """The ids of an update that failed to decode, when they are there and plausible, to name it."""
    if isinstance(raw, bytes):
        try:
            raw, _ = read_binary_update(raw)
        except ValueError:
            return None, None
    if not isinstance(raw, dict):
        return None, None
    device_id, update_id = (raw.get(name) for name in ("device_id", "update_id"))
    return _plausible(device_id), _plausible(update_id)


def _plausible(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 128 else None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UpdateFormatError(f"the body is not valid JSON: {_short(exc)}") from None


def _json_update(data: Any) -> LocalUpdate:
    parsed = _validated(UpdateBody, data)
    arrays = {name: numeric_array(name, value) for name, value in parsed.arrays.items()}
    return _local_update(parsed, arrays)


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


def _local_update(fields: UpdateFields, arrays: dict[str, np.ndarray]) -> LocalUpdate:
    return local_update(fields.model_dump(exclude={"arrays"}), arrays)


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
