"""The Prefect runtime of a pipeline: each step a task (with the retries its marking asks for),
each lock a global concurrency limit, each report an artifact in the Prefect UI."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar, cast

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event

from pipelines.runtime import Runtime, retry_of

P = ParamSpec("P")
R = TypeVar("R")

_tasks: dict[Callable[..., Any], Task[Any, Any]] = {}


def as_task(fn: Callable[P, R]) -> Task[P, R]:
    """``fn`` as a Prefect task named after it (made once per function). Nothing is cached
    between runs: each step reads or writes a server whose state moves on."""
    if fn not in _tasks:
        retry = retry_of(fn)
        _tasks[fn] = task(
            retries=retry.retries, retry_delay_seconds=retry.delay_seconds, cache_policy=NO_CACHE
        )(fn)
    return cast("Task[P, R]", _tasks[fn])


class PrefectRuntime(Runtime):
    """Steps as Prefect tasks inside the calling flow run."""

    def step(self, fn: Callable[P, R]) -> Callable[P, R]:
        return as_task(fn)

    def lock(self, name: str) -> AbstractContextManager[object]:
        return concurrency(name, occupy=1, strict=True)

    def artifact(self, key: str, markdown: str, description: str) -> None:
        create_markdown_artifact(markdown, key=key, description=description)

    def event(self, name: str, *, resource: dict[str, str], payload: dict[str, Any]) -> None:
        emit_event(event=name, resource=resource, payload=payload)


PREFECT = PrefectRuntime()
