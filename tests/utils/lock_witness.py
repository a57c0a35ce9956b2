"""Forcing flow runs to meet at a lock, and seeing who waited for whom.

A :class:`WitnessedRuntime` is the Prefect runtime with one change: before a run asks for a lock
it says it arrived and waits until every run of the race has arrived (a barrier in a shared
folder), so the runs reach the lock together instead of by luck. It then records when it asked
for the lock, when it got it and when it let go, each as a line appended to one shared log. The
order of those lines is the order the events happened in (one ``O_APPEND`` write each, on one
machine), so a test reads who held the lock when without comparing clocks.

The flow processes use it through :data:`RUN_FLOW`; the test reads the log back with
:func:`read_events`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from flows.runtime import PrefectRuntime

LOG = "events.jsonl"
ARRIVED, ASKED, ENTERED, LEFT, ENDED = "arrived", "asked", "entered", "left", "ended"
BARRIER_SECONDS = 420.0
"""Generous: a training on a loaded machine is slow; only a run that never comes takes this long."""

RUN_FLOW = """
import json, sys
import flows.train
from tests.utils.lock_witness import WitnessedRuntime, record, ENDED
repository, commit_id, folder, parties, label = sys.argv[1:6]
flows.train.PREFECT = WitnessedRuntime(folder, parties=int(parties), label=label)
try:
    result = flows.train.train_on_commit(
        repository=repository, commit_id=commit_id, reason="lakefs.post-merge"
    )
finally:
    record(folder, label, ENDED)
print("RESULT " + json.dumps(result, default=str))
"""
"""The deployed training flow, run as a worker runs it, with :class:`WitnessedRuntime` as its
runtime. Arguments: repository, commit id, the shared folder, how many runs race, this run's
label."""


@dataclass(frozen=True)
class Event:
    run: str
    what: str
    at: float
    """Wall-clock time, for failure messages only: the log's order is what tests compare."""


def record(folder: str | Path, run: str, what: str) -> None:
    """Append one event to the shared log, in a single write (lines from two processes never
    interleave)."""
    line = json.dumps({"run": run, "what": what, "at": time.time()}) + "\n"
    fd = os.open(Path(folder) / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(folder: str | Path) -> list[Event]:
    """Every event of the shared log, in the order they happened."""
    path = Path(folder) / LOG
    if not path.exists():
        return []
    return [Event(**json.loads(line)) for line in path.read_text().splitlines() if line]


def await_everyone(folder: str | Path, *, parties: int, label: str) -> None:
    """Return once ``parties`` runs have arrived; fail loudly as soon as another run ended
    without arriving (it can never come), or after :data:`BARRIER_SECONDS`."""
    deadline = time.monotonic() + BARRIER_SECONDS
    while True:
        events = read_events(folder)
        arrived = {event.run for event in events if event.what == ARRIVED}
        if len(arrived) >= parties:
            return
        gone = {event.run for event in events if event.what == ENDED} - arrived
        if gone:
            raise RuntimeError(
                f"barrier: run {label} waited at the lock for runs {sorted(gone)}, "
                "which ended without reaching it"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"barrier: only runs {sorted(arrived)} of {parties} reached the lock "
                f"within {BARRIER_SECONDS:.0f} s"
            )
        time.sleep(0.02)


class WitnessedRuntime(PrefectRuntime):
    """The Prefect runtime, whose locks are first a barrier for every run of the race, and whose
    every ask, entry and exit of a lock is recorded in the shared log."""

    def __init__(self, folder: str | Path, *, parties: int, label: str) -> None:
        self.folder = Path(folder)
        self.parties = parties
        self.label = label

    def lock(self, name: str) -> AbstractContextManager[object]:
        return self._witnessed(name)

    @contextlib.contextmanager
    def _witnessed(self, name: str) -> Iterator[object]:
        record(self.folder, self.label, ARRIVED)
        await_everyone(self.folder, parties=self.parties, label=self.label)
        record(self.folder, self.label, ASKED)
        with super().lock(name) as held:
            record(self.folder, self.label, ENTERED)
            try:
                yield held
            finally:
                # Still inside the real lock: a run that enters after this line waited for it.
                record(self.folder, self.label, LEFT)
