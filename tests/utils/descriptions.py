"""Edited copies of the shipped dataset description, as a team would change it."""

from __future__ import annotations

from typing import Any

from lakeloop.dataset import DatasetSpec, load_spec

V1 = load_spec()


def changed(**edit: Any) -> DatasetSpec:
    """The shipped description as version 2 with ``edit`` applied to its fields."""
    raw = V1.model_dump(mode="json")
    raw["version"] = 2
    if drop := edit.get("drop"):
        raw["features"] = [f for f in raw["features"] if f["name"] != drop]
        raw["checks"] = [
            c for c in raw["checks"] if drop not in (c.get("left"), c.get("right"), c.get("column"))
        ]
    if add := edit.get("add"):
        raw["features"].append(add)
    if target := edit.get("target"):
        old = raw["target"]["name"]
        raw["target"]["name"] = target
        for check in raw["checks"]:
            if check.get("column") == old:
                check["column"] = target
    return DatasetSpec.model_validate(raw)
