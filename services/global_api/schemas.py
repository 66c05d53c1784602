"""The typed answers of the endpoints that have no module of their own to hold them: versions, status,
configuration, aggregation, submissions, health and the JSON global model (the lists' items are typed
beside what reads them: `monitoring`, `event_pages`, `normal_acks`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flead.federated import STRATEGY_NAMES
from services.global_api.monitoring import UtcTime
from services.global_api.pages import KeyCursor, Page

Strategy = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]


class ClientSettings(BaseModel):
    """The `flead.federated.ClientConfig` a version was made with."""

    proximal_mu: float | None = Field(None, description="FedProx weight.")
    personal_mix: float | None = Field(None, description="Personalisation mix.")


class DeviceContribution(BaseModel):
    device_id: str
    noise_multiplier: float = Field(description="Noise over the clip norm of its share of the release.")
    count: int = Field(description="Releases at that multiplier.")


class VersionPrivacy(BaseModel):
    """The differential privacy of a version (docs/privacy.md). `mode` `off`: no DP, no bound (epsilon
    null)."""

    mode: Literal["off", "local", "central"]
    epsilon: float | None = Field(
        None,
        description="The largest epsilon, at `delta`, of any device whose updates this version's weights "
        "carry (through it or an earlier version); null: no bound (DP off here or in an ancestor).",
    )
    delta: float | None = None
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    epsilon_budget: float | None = None
    accountant: str | None = Field(None, description="How epsilon was computed.")
    n_contributors: int | None = Field(None, description="Devices whose updates made this version.")
    note: str | None = Field(None, description="Why epsilon has no bound although DP is on.")
    contributions: list[DeviceContribution] | None = Field(
        None, description="Central DP: what each device released in this version (history only)."
    )


class PrivacySettings(BaseModel):
    """The deployment's differential privacy (`FLEAD_DP_*`; not changeable at run time)."""

    mode: Literal["off", "local", "central"]
    clip_norm: float
    noise_multiplier: float
    delta: float
    epsilon_budget: float | None = None


class VersionSummary(BaseModel):
    version: int
    created_at: UtcTime
    parent_version: int | None = None
    strategy: str | None = Field(None, description="null for the initial version.")
    trigger: str = Field(description="`init`, `manual` or `auto`.")
    n_updates: int
    n_devices: int
    total_samples: int
    metrics: dict[str, int | float | None] = Field(
        description="Aggregation counts and the sample-weighted means of the updates' metrics (`mean_loss`)."
    )
    client: ClientSettings
    privacy: VersionPrivacy


class VersionPage(Page[VersionSummary]):
    """A page of global versions, newest first."""


VERSION_CURSOR = KeyCursor("version", int)


class UpdateCounts(BaseModel):
    pending: int
    aggregated: int
    refused: int


class PendingUpdates(BaseModel):
    """The local updates awaiting aggregation (`GET /api/updates/pending`)."""

    count: int = Field(description="How many are pending.")
    newest_id: str | None = Field(description="The newest pending update's key (null: none pending).")
    newest_received_at: UtcTime | None = Field(description="When the API received the newest one.")


class RuntimeSettings(BaseModel):
    """The runtime configuration (`GET /api/config`)."""

    strategy: Strategy
    auto_aggregate_threshold: int = Field(description="Pending updates that make a submission aggregate.")
    max_staleness: int = Field(description="Versions an update's base may lag.")
    proximal_mu: float = Field(description="Served with the versions made from now on.")
    personal_mix: float = Field(description="Served with the versions made from now on.")
    privacy: PrivacySettings


class Status(BaseModel):
    version: int = Field(description="The latest global version.")
    created_at: UtcTime
    strategy: str | None = None
    versions: int = Field(description="How many versions exist (consecutive from 0).")
    updates: UpdateCounts
    config: RuntimeSettings
    architecture: dict[str, Any] = Field(description="The model's `ModelConfig.to_dict()`.")


class RefusedUpdate(BaseModel):
    device_id: str
    update_id: str
    reason: str


class AggregationResult(BaseModel):
    created: bool = Field(description="Whether a new version was made.")
    version: int = Field(description="The new version, or the current one when none was made.")
    parent_version: int | None = None
    reason: str | None = Field(None, description="Why no version was made.")
    n_updates: int = 0
    n_devices: int = 0
    refused: list[RefusedUpdate] = []
    attempts: int = Field(1, description="Tries, counting those lost to concurrent aggregations.")


class SubmitResult(BaseModel):
    status: Literal["accepted", "duplicate"]
    pending: int = Field(description="Updates pending aggregation.")
    version: int = Field(description="The latest global version after this submission.")
    aggregation: AggregationResult | None = Field(
        None, description="Present when this submission triggered the automatic aggregation."
    )


class BatchItemResult(BaseModel):
    index: int = Field(description="The update's position in the request.")
    device_id: str | None = Field(None, description="Absent when the update was too malformed to name.")
    update_id: str | None = None
    status: Literal["accepted", "duplicate", "refused"]
    reason: str | None = Field(None, description="Why it was refused.")


class BatchSubmitResult(BaseModel):
    results: list[BatchItemResult] = Field(description="One per update, in the order of the request.")
    accepted: int
    duplicate: int
    refused: int
    pending: int = Field(description="Updates pending aggregation.")
    version: int = Field(description="The latest global version when this batch was stored.")
    aggregation_scheduled: bool = Field(
        description="The batch reached the automatic aggregation threshold: the API aggregates in the "
        "background (watch `version` in `GET /api/status`)."
    )


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    mongodb: bool
    version: int | None = Field(None, description="The latest global version (when MongoDB is up).")
    error: str | None = Field(None, description="Why MongoDB counts as down (when it does).")


class ArrayLayout(BaseModel):
    name: str
    shape: list[int]


class ModelDocument(BaseModel):
    """`AnomalyModel.to_json_dict()` (read it with `AnomalyModel.from_json_dict`)."""

    model_config = ConfigDict(extra="allow")

    format: str = Field(description="`flead-model`.")
    format_version: int
    architecture: dict[str, Any]
    layers: list[dict[str, Any]]
    features: list[str]
    normalizer: dict[str, Any] = Field(description="Fresh: each device keeps its own.")
    n_samples_seen: int
    metadata: dict[str, Any]
    dtype: str = Field(description="`float32`.")
    arrays: list[ArrayLayout]
    weights: dict[str, Any] = Field(description="Every weight array by name, as nested lists.")


class GlobalModelDocument(BaseModel):
    """`GET /api/global-model` as JSON: the model's wire format, shared with the stream trainer (its
    times as Python's `isoformat`, e.g. `2026-11-28T10:38:40.882000+00:00`)."""

    version: int
    created_at: datetime
    parent_version: int | None = None
    strategy: str | None = None
    model: ModelDocument
    client: ClientSettings
    privacy: VersionPrivacy = Field(description="The version's privacy, without per-device contributions.")
