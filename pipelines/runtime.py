"""How a pipeline's steps run: called directly (tests, benchmarks, the command line) or as Prefect
tasks (``flows/``).

A pipeline is a plain function that calls each of its steps through ``runtime.step(fn)``, takes
its named locks through ``runtime.lock`` and hands its reports to ``runtime.artifact``. The
default :class:`Runtime` calls the step itself, locks nothing and keeps no artifact; the flows
give a runtime that makes each step a task with the retries its :func:`step` marking asks for.
So the sequence a test or a benchmark runs is the one the deployed flow runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from lakeloop.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

_RETRY = "__lakeloop_retry__"


@dataclass(frozen=True)
class Retry:
    """How often a step is tried again when it raises (talking to a server), and after how long."""

    retries: int = 0
    delay_seconds: float = 0.0


def step(
    *, retries: int = 0, delay_seconds: float = 5.0
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a pipeline step with its retry policy (a step that only computes has none)."""

    def mark(fn: Callable[P, R]) -> Callable[P, R]:
        setattr(fn, _RETRY, Retry(retries, delay_seconds))
        return fn

    return mark


def retry_of(fn: Callable[..., object]) -> Retry:
    """The retry policy a step was marked with (none for an unmarked function)."""
    found = getattr(fn, _RETRY, None)
    return found if isinstance(found, Retry) else Retry()


class Runtime:
    """Runs a pipeline's steps in process, as plain calls. Subclasses change how."""

    def step(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn``, ready to be called as one step of the pipeline."""
        return fn

    def lock(self, name: str) -> AbstractContextManager[object]:
        """Held while one pipeline at a time may run a section (a promotion, for one model)."""
        return nullcontext()

    def artifact(self, key: str, markdown: str, description: str) -> None:
        """A report the user reads where the run is shown (the Prefect UI); kept nowhere here."""

    def event(self, name: str, *, resource: dict[str, str], payload: dict[str, Any]) -> None:
        """An event for automations and waiting callers (Prefect's event bus); logged here."""
        run_logger().info("event %s for %s", name, resource.get("prefect.resource.id"))


PLAIN = Runtime()
"""Steps called in process: tests, benchmarks, the command line."""


def promotion_lock(settings: Settings) -> str:
    """Name of the lock (a Prefect global concurrency limit) that serialises promotions of one
    model."""
    return f"lakeloop-promote-{settings.mlflow.model_name}"


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a flow or task run (its lines reach the Prefect UI); this
    package's own outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pipelines")
