"""Whether a ``LAKELOOP_*`` variable name set by a deployment file is a real setting.

pydantic-settings ignores unknown variables (``extra="ignore"``), so a misspelled name in a
compose file or a ConfigMap would be silently dropped and the default used: these checks are
what catches it.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from lakeloop.settings import Settings

PREFIX = "LAKELOOP_"
DELIMITER = "__"


def is_setting(name: str) -> bool:
    """Whether ``LAKELOOP_A__B`` names a field of :class:`Settings` (case-insensitive, as
    pydantic-settings reads it) and leads to a value, not to a whole group."""
    if not name.upper().startswith(PREFIX):
        return False
    model: type[BaseModel] | None = Settings
    path = name[len(PREFIX) :].lower().split(DELIMITER)
    for position, part in enumerate(path):
        if model is None or part not in model.model_fields:
            return False
        last = position == len(path) - 1
        nested = _model_of(model.model_fields[part].annotation)
        if last:
            return nested is None  # a group needs a JSON object; deployment files set leaves
        model = nested
    return False


def unknown_settings(names: object) -> list[str]:
    """The ``LAKELOOP_*`` names among ``names`` that are not settings, sorted."""
    return sorted(
        str(name)
        for name in names  # type: ignore[attr-defined]
        if str(name).upper().startswith(PREFIX) and not is_setting(str(name))
    )


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings group a field holds (through ``Optional``/``Annotated``), else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_of(argument)
        if found is not None:
            return found
    return None
