"""The dataset description: which columns exist, their types and bounds, and the target.

Everything downstream (validation, training, the API schema, monitoring) reads this object, so a
team's own table needs a YAML file, not code.
"""

from __future__ import annotations

from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

EXAMPLE = "california_housing.yaml"


class Feature(BaseModel):
    """One input column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["numeric", "categorical"]
    description: str = ""
    min: float | None = None
    """Smallest valid value (numeric features)."""
    max: float | None = None
    """Largest valid value (numeric features)."""
    categories: tuple[str, ...] = ()
    """Known values (categorical features); others are treated as unknown, not rejected."""
    nullable: bool = False
    """Whether a missing value is valid input."""

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs a list of categories")
        if self.type == "numeric" and self.categories:
            raise ValueError(f"numeric feature {self.name!r} cannot have categories")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r} has min > max")
        return self


class Target(BaseModel):
    """The column the model predicts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    unit: str = ""
    min: float | None = None
    max: float | None = None


class DatasetSpec(BaseModel):
    """A table lakeloop can validate, train on and serve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int = Field(ge=1)
    description: str = ""
    target: Target
    features: tuple[Feature, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> DatasetSpec:
        names = [feature.name for feature in self.features] + [self.target.name]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"column names appear twice: {', '.join(duplicates)}")
        return self

    @cached_property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @cached_property
    def numeric_features(self) -> list[str]:
        return [feature.name for feature in self.features if feature.type == "numeric"]

    @cached_property
    def categorical_features(self) -> list[str]:
        return [feature.name for feature in self.features if feature.type == "categorical"]

    @cached_property
    def columns(self) -> list[str]:
        """Feature columns followed by the target, the order batches are written in."""
        return [*self.feature_names, self.target.name]

    def feature(self, name: str) -> Feature:
        return next(feature for feature in self.features if feature.name == name)


def load_spec(path: Path | None = None) -> DatasetSpec:
    """Read a dataset description; ``None`` reads the shipped California housing example."""
    if path is None:
        text = resources.files("lakeloop.datasets").joinpath(EXAMPLE).read_text()
        source = f"lakeloop/datasets/{EXAMPLE}"
    else:
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"cannot read dataset description {path}: {error}") from error
        source = str(path)
    try:
        return DatasetSpec.model_validate(yaml.safe_load(text))
    except Exception as error:
        raise ValueError(f"invalid dataset description {source}: {error}") from error
