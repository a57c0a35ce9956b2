"""Request and response schemas of the prediction API.

The record schema is generated from the dataset description, so the OpenAPI document, the
validation and the model all agree on one list of features with their bounds.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from lakeloop.dataset import DatasetSpec, Feature


def _field_type(feature: Feature) -> Any:
    if feature.type == "categorical":
        known = ", ".join(feature.categories)
        kind: Any = Annotated[
            str,
            Meta(
                min_length=1,
                max_length=200,
                description=f"{feature.description} Known values: {known}; others are unknown.",
                examples=[feature.categories[0]],
            ),
        ]
    else:
        kind = Annotated[
            float, Meta(description=feature.description, ge=feature.min, le=feature.max)
        ]
    return kind | None if feature.nullable else kind


def record_type(spec: DatasetSpec) -> type[msgspec.Struct]:
    """A msgspec struct with one required field per feature, bounds as constraints."""
    fields = [(feature.name, _field_type(feature)) for feature in spec.features]
    return msgspec.defstruct(
        "HouseFeatures", fields, forbid_unknown_fields=True, kw_only=True, module=__name__
    )


def request_type(spec: DatasetSpec, *, max_batch: int) -> type[msgspec.Struct]:
    """``{"records": [...]}`` with between 1 and ``max_batch`` records."""
    record = record_type(spec)
    return msgspec.defstruct(
        "PredictionRequest",
        [("records", Annotated[list[record], Meta(min_length=1, max_length=max_batch)])],  # type: ignore[valid-type]
        module=__name__,
    )


class ModelRef(msgspec.Struct):
    """Which registered model version answered."""

    name: str
    version: str


class PredictionResponse(msgspec.Struct):
    """One prediction per record, in request order."""

    predictions: list[float]
    model: ModelRef


class ModelInfo(msgspec.Struct):
    """The served model and its lineage."""

    name: str
    version: str
    alias: str
    run_id: str
    lakefs_repository: str
    lakefs_commit_id: str
    metrics: dict[str, float]
    loaded_at: str


class Health(msgspec.Struct):
    status: str
    detail: str = ""
