"""A child process stopped for good at a chosen step: it announces each step on a pipe and waits
for the parent's go-ahead; at the step under test the parent checks the world, then SIGKILLs it
(no ``finally``, no ``atexit``, nothing in the child runs after that)."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from typing import Any

import pytest


def run_and_kill_at(
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    step: str,
    check: Callable[[], None],
    deadline: float,
) -> list[str]:
    """Start ``target(*args, pipe)`` in a spawned child, let it pass every step before ``step``,
    call ``check`` there and SIGKILL the child. Returns the steps it announced."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=target, args=(*args, child_end), daemon=True)
    child.start()
    child_end.close()
    reached: list[str] = []
    try:
        while True:
            if not parent_end.poll(deadline):
                pytest.fail(f"the child did not reach its next step within {deadline} s")
            try:
                reached.append(parent_end.recv())
            except EOFError:
                pytest.fail(f"the child ended before {step!r} (exit code {child.exitcode})")
            if reached[-1] == step:
                check()
                child.kill()
                child.join(timeout=deadline)
                assert child.exitcode == -signal.SIGKILL
                return reached
            parent_end.send("go on")
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=deadline)
        parent_end.close()
