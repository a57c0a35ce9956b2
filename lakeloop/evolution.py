"""When the dataset description changes: what happens to the tables ingested under an older one.

Teams change what they collect. A table is judged by the description it was ingested with (its
batch's ``_description.yaml`` beside it in lakeFS); a commit's training set is then built under the
current description by these rules, never by refusing the whole history:

- a feature the current description dropped is dropped from older tables;
- a feature it added as nullable is missing (null) in older tables;
- a feature it added as required, or one whose type changed (numeric <-> categorical), cannot be
  filled in: older tables without it are left out of training, and the report says so;
- the target cannot be renamed: a change that renames it, or leaves no trainable row, is refused
  before anything runs (``lakeloop up``, ``lakeloop dataset diff``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lakeloop import lakefs_client
from lakeloop.dataset import DatasetSpec

DESCRIPTION_FILE = lakefs_client.DESCRIPTION_FILE


@dataclass(frozen=True)
class Change:
    """What changed from one description to the next, feature by feature."""

    old: DatasetSpec
    new: DatasetSpec
    dropped: tuple[str, ...]
    """Features the new description no longer has: dropped from older tables."""
    added_nullable: tuple[str, ...]
    """New nullable features: missing in older tables."""
    added_required: tuple[str, ...]
    """New features that must have a value: older tables lack them and are left out."""
    retyped: tuple[str, ...]
    """Features whose type changed: older tables' values mean something else; left out."""

    @property
    def target_renamed(self) -> bool:
        return self.old.target.name != self.new.target.name

    @property
    def excludes_older_tables(self) -> bool:
        """Tables ingested under ``old`` cannot train under ``new``."""
        return self.target_renamed or bool(self.added_required or self.retyped)

    @property
    def same_columns(self) -> bool:
        return not (self.dropped or self.added_nullable or self.added_required or self.retyped)

    def exclusion_reason(self) -> str:
        """Why a table ingested under ``old`` is left out under ``new`` (empty when it is not)."""
        if self.target_renamed:
            return (
                f"its target is {self.old.target.name}, the description's is {self.new.target.name}"
            )
        reasons = []
        if self.added_required:
            reasons.append(f"it lacks the required feature(s) {', '.join(self.added_required)}")
        if self.retyped:
            reasons.append(f"the type of {', '.join(self.retyped)} changed")
        return "; ".join(reasons)

    def lines(self) -> list[str]:
        """The change in words, one line per kind of change."""
        found = []
        if self.target_renamed:
            found.append(
                f"target renamed: {self.old.target.name} -> {self.new.target.name} "
                "(refused: a model cannot learn a target older tables do not have)"
            )
        if self.dropped:
            found.append(f"dropped: {', '.join(self.dropped)} (dropped from older tables)")
        if self.added_nullable:
            found.append(
                f"added, nullable: {', '.join(self.added_nullable)} (missing in older tables)"
            )
        if self.added_required:
            found.append(
                f"added, required: {', '.join(self.added_required)} "
                "(older tables are left out of training)"
            )
        if self.retyped:
            found.append(
                f"type changed: {', '.join(self.retyped)} (older tables are left out of training)"
            )
        return found or ["no change to the columns"]


def compare(old: DatasetSpec, new: DatasetSpec) -> Change:
    """What changed from ``old`` to ``new``."""
    old_features = {feature.name: feature for feature in old.features}
    new_features = {feature.name: feature for feature in new.features}
    added = [name for name in new_features if name not in old_features]
    return Change(
        old=old,
        new=new,
        dropped=tuple(name for name in old_features if name not in new_features),
        added_nullable=tuple(name for name in added if new_features[name].nullable),
        added_required=tuple(name for name in added if not new_features[name].nullable),
        retyped=tuple(
            name
            for name, feature in new_features.items()
            if name in old_features and old_features[name].type != feature.type
        ),
    )


def adapt(frame: pd.DataFrame, *, ingested: DatasetSpec, current: DatasetSpec) -> pd.DataFrame:
    """A table ingested under ``ingested`` as training data under ``current``: dropped features
    dropped, added nullable ones missing. Call only when :func:`compare` does not exclude it."""
    if ingested is current or ingested.stored_columns == current.record_columns:
        return frame
    adapted = frame.drop(columns=[c for c in frame.columns if c not in current.record_columns])
    for name in current.record_columns:
        if name not in adapted.columns:
            numeric = name in current.numeric_features
            adapted[name] = np.nan if numeric else None
    return adapted[current.record_columns]


def as_trained_under(
    frame: pd.DataFrame, *, current: DatasetSpec, trained: DatasetSpec
) -> tuple[pd.DataFrame, list[str]]:
    """Rows described by ``current`` as a model trained under ``trained`` receives them once
    clients send what ``current`` describes: its features that ``current`` no longer has, or has
    with another type, are missing (XGBoost routes them as it routes any missing value). Returns
    the rows with ``trained``'s features and target, and the names of the features made missing."""
    if trained is current or trained.digest == current.digest:
        return frame, []
    missing = [
        feature.name
        for feature in trained.features
        if feature.name not in frame.columns
        or feature.name not in current.columns
        or current.feature(feature.name).type != feature.type
    ]
    rows = frame.drop(columns=[name for name in missing if name in frame.columns])
    for name in missing:
        rows[name] = np.nan if trained.feature(name).type == "numeric" else None
    return rows[[*trained.feature_names, current.target.name]], missing
