"""The event spool: what is stored survives whole or not at all, is read back, kept once Prefect
accepted it and forgotten only once Prefect's event store holds it (sent again when the store
still lacks it after a deadline), a damaged file is set aside without stopping delivery, and a
full spool refuses."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from gateway.spool import (
    CONFIRM_BATCH_SIZE,
    CONFIRM_DEADLINE_SECONDS,
    Delivery,
    Pending,
    Redelivery,
    Spool,
    SpoolError,
    SpoolFullError,
)
from lakeloop.events import event_id
from tests.utils.durability import DurabilityCalls
from tests.utils.killing import run_and_kill_at
from tests.utils.waiting import eventually


def event(key: str = "a", **payload: object) -> dict[str, Any]:
    return {
        "id": event_id("lakefs.post-merge", "housing", "main", key),
        "event": "lakefs.post-merge",
        "occurred": "2026-11-23T10:00:00Z",
        "resource": {"prefect.resource.id": "lakefs.repository.housing"},
        "payload": {"commit_id": key, **payload},
    }


def wait_until_files_are_newer_than(path: Path, *, probe: Path) -> None:
    """Until a file written now gets a later modification time than ``path`` (file systems keep
    a coarse clock), so files stored from now on are distinctly newer."""

    def newer() -> bool:
        probe.write_bytes(b"")
        return probe.stat().st_mtime_ns > path.stat().st_mtime_ns

    eventually(newer, what=f"a file written now newer than {path.name}")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").open()


class Receiver:
    """A hand-written stand-in for Prefect: answers what it is told, records what it took, and
    keeps an event store it can be asked about (:meth:`stored`). With ``loses_accepted`` it
    accepts and never stores, as Prefect killed after its 204 and before its persister wrote."""

    def __init__(self, answer: Delivery = Delivery.ACCEPTED) -> None:
        self.answer = answer
        self.received: list[str] = []
        self.store: set[str] = set()
        self.loses_accepted = False
        self.store_down = False
        """While set, asking the store raises (Prefect unreachable)."""
        self.lookups: list[list[str]] = []
        self.attempts = 0
        self._lock = threading.Lock()

    def __call__(self, sent: dict[str, Any]) -> Delivery:
        with self._lock:
            self.attempts += 1
            if self.answer is Delivery.ACCEPTED:
                self.received.append(sent["id"])
                if not self.loses_accepted:
                    self.store.add(sent["id"])
            return self.answer

    def stored(self, event_ids: list[str]) -> set[str]:
        with self._lock:
            self.lookups.append(list(event_ids))
            if self.store_down:
                raise ConnectionError("Prefect is down")
            return self.store.intersection(event_ids)


def redelivery(spool: Spool, receiver: Receiver, **timing: float) -> Redelivery:
    return Redelivery(spool, receiver, receiver.stored, **timing)


def held(spool: Spool) -> int:
    """Events the spool holds, pending or sent."""
    return spool.usage().events


def sent_long_ago(spool: Spool, event_id: str, *, seconds: float) -> None:
    """Make a sent event look sent ``seconds`` ago (its file's modification time)."""
    when = time.time() - seconds
    os.utime(spool.sent_dir / f"{event_id}.json", (when, when))


# Storage ----------------------------------------------------------------------------------------


def test_put_read_send_confirm_round_trip(spool: Spool) -> None:
    stored = event("a", rows=3)
    path = spool.put(stored)
    assert path.parent == spool.pending_dir
    [pending] = spool.pending()
    assert pending.event_id == stored["id"]
    assert spool.read(pending) == stored
    before = time.time()
    spool.mark_sent(stored["id"])
    assert spool.pending() == []
    assert not spool.contains(stored["id"])
    [sent] = spool.sent()
    assert sent.event_id == stored["id"]
    assert json.loads(sent.path.read_text()) == stored  # the whole event, to send it again
    assert before - 1 <= sent.sent_at <= time.time() + 1  # stamped when sent, not when stored
    spool.mark_sent(stored["id"])  # idempotent
    spool.confirm(stored["id"])
    assert spool.sent() == []
    assert held(spool) == 0
    spool.confirm(stored["id"])  # idempotent


def test_a_repeat_of_a_sent_event_is_not_stored_again(spool: Spool) -> None:
    spool.put(event("a"))
    spool.mark_sent(event("a")["id"])
    spool.put(event("a"))  # the same webhook again, before Prefect's store showed the first
    assert spool.pending() == []
    assert [sent.event_id for sent in spool.sent()] == [event("a")["id"]]
    assert spool.usage().events == 1


def test_the_same_id_twice_is_one_pending_event(spool: Spool) -> None:
    spool.put(event("a"))
    spool.put(event("a"))
    assert [p.event_id for p in spool.pending()] == [event("a")["id"]]


def test_pending_is_oldest_first_and_survives_a_new_spool_object(
    spool: Spool, tmp_path: Path
) -> None:
    for key in ("first", "second", "third"):
        stored = spool.put(event(key))
        wait_until_files_are_newer_than(stored, probe=tmp_path / "probe")
    reopened = Spool(tmp_path / "spool").open()
    assert [p.event_id for p in reopened.pending()] == [
        event(key)["id"] for key in ("first", "second", "third")
    ]


def test_a_crash_between_write_and_rename_leaves_no_half_event(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_: object) -> None:
        raise OSError("simulated crash before the rename")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(SpoolError, match="cannot store event"):
            spool.put(event("a"))
    assert spool.pending() == []
    # A process killed outright leaves its temporary file behind: never seen as an event, and
    # deleted when the spool is opened again.
    (spool.tmp_dir / f"{event('b')['id']}.deadbeef.json").write_text('{"id": "half')
    assert spool.pending() == []
    Spool(tmp_path / "spool").open()
    assert list(spool.tmp_dir.iterdir()) == []
    assert spool.pending() == []


def test_a_stored_event_is_complete_json_on_disk(spool: Spool) -> None:
    path = spool.put(event("a"))
    assert json.loads(path.read_text()) == event("a")
    assert list(spool.tmp_dir.iterdir()) == []


# Durability: what the fsyncs and the rename protect ---------------------------------------------
#
# A crash is injected at each step of put by running it in a child process that pauses there
# (hooks it installs around os.fdopen, os.fsync and os.replace announce each step on a pipe and
# wait) and SIGKILLing the child at the chosen step. A SIGKILL keeps the page cache, so these show
# what a crash leaves, not that the data reached the disk; the order test below shows that.

HALF_WRITTEN = "half of the event written to the temporary file"
WRITTEN = "the whole event written, before the file's fsync"
FILE_SYNCED = "the file fsync'd, before the rename"
RENAMED = "renamed into pending/, before the folder's fsync"
FOLDER_SYNCED = "the folder fsync'd, before put returns"
STORED = "put returned"
PUT_STEPS = (HALF_WRITTEN, WRITTEN, FILE_SYNCED, RENAMED, FOLDER_SYNCED, STORED)
BEFORE_THE_RENAME = (HALF_WRITTEN, WRITTEN, FILE_SYNCED)
CHILD_DEADLINE_SECONDS = 120.0
"""How long the parent waits for the child to reach its next step (a spawn on a loaded machine)."""


def large_event() -> dict[str, Any]:
    """An event big enough that half of it is clearly not an event (about 64 kB)."""
    return event("durable", rows=3, note="x" * 65_536)


class _HalfWayFile:
    """A file that writes half of what it is given, pauses, then writes the rest."""

    def __init__(self, handle: Any, pause: Callable[[str], None]) -> None:
        self._handle = handle
        self._pause = pause

    def __enter__(self) -> _HalfWayFile:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.close()

    def write(self, data: bytes) -> int:
        half = len(data) // 2
        self._handle.write(data[:half])
        self._handle.flush()
        self._pause(HALF_WRITTEN)
        return half + int(self._handle.write(data[half:]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def put_in_child(folder: Path, stored: dict[str, Any], pipe: Connection) -> None:
    """The child process: put ``stored`` into the spool at ``folder``, announcing each step on
    ``pipe`` and going on only when the parent answers (it SIGKILLs the child instead at the step
    under test)."""

    def pause(step: str) -> None:
        pipe.send(step)
        pipe.recv()

    fdopen, fsync, replace = os.fdopen, os.fsync, os.replace

    def paused_fdopen(descriptor: int, *args: Any, **kwargs: Any) -> Any:
        return _HalfWayFile(fdopen(descriptor, *args, **kwargs), pause)

    def paused_fsync(descriptor: int) -> None:
        folder_sync = stat.S_ISDIR(os.fstat(descriptor).st_mode)
        if not folder_sync:
            pause(WRITTEN)
        fsync(descriptor)
        if folder_sync:
            pause(FOLDER_SYNCED)

    def paused_replace(source: Any, target: Any) -> None:
        pause(FILE_SYNCED)
        replace(source, target)
        pause(RENAMED)

    spool = Spool(folder).open()
    os.fdopen = paused_fdopen  # type: ignore[assignment]
    os.fsync = paused_fsync  # type: ignore[assignment]
    os.replace = paused_replace  # type: ignore[assignment]
    spool.put(stored)
    pause(STORED)


def put_and_kill_at(folder: Path, stored: dict[str, Any], *, step: str) -> list[str]:
    """Run :func:`put_in_child`, let it pass every step before ``step``, check what the disk
    holds there and SIGKILL it. Returns the steps it reached."""
    return run_and_kill_at(
        put_in_child,
        (folder, stored),
        step=step,
        check=lambda: _check_the_disk_at(folder, stored, step=step),
        deadline=CHILD_DEADLINE_SECONDS,
    )


def _check_the_disk_at(folder: Path, stored: dict[str, Any], *, step: str) -> None:
    """The child really is where the step says: the event's bytes are in the temporary file (half
    or whole) and not pending before the rename, and pending and whole after it."""
    data = json.dumps(stored, separators=(",", ":"), sort_keys=True).encode()
    temporary = list((folder / "tmp").iterdir())
    pending = list((folder / "pending").iterdir())
    if step in BEFORE_THE_RENAME:
        assert pending == []
        [half_or_whole] = temporary
        expected = data[: len(data) // 2] if step == HALF_WRITTEN else data
        assert half_or_whole.read_bytes() == expected
    else:
        assert temporary == []
        assert [path.read_bytes() for path in pending] == [data]


@pytest.mark.parametrize(
    "step",
    PUT_STEPS,
    ids=["half-written", "written", "file-synced", "renamed", "folder-synced", "stored"],
)
def test_a_writer_killed_at_any_step_of_put_leaves_no_half_event_and_loses_no_stored_one(
    tmp_path: Path, step: str
) -> None:
    folder = tmp_path / "spool"
    stored = large_event()
    reached = put_and_kill_at(folder, stored, step=step)
    assert reached == list(PUT_STEPS[: PUT_STEPS.index(step) + 1])

    # A fresh spool on the same folder (the gateway started again) delivers what it holds.
    spool = Spool(folder).open()
    delivered: list[dict[str, Any]] = []

    def receive(sent: dict[str, Any]) -> Delivery:
        delivered.append(sent)
        return Delivery.ACCEPTED

    assert Redelivery(spool, receive, set).drain() is True
    if step in BEFORE_THE_RENAME:
        # put never returned, so nothing was promised; the half-written file is deleted, and it
        # is neither pending nor delivered nor set aside as a damaged event.
        assert delivered == []
    else:
        assert delivered == [stored]  # whole, once
    assert spool.pending() == []
    assert list(spool.tmp_dir.iterdir()) == []
    assert list(spool.quarantine_dir.iterdir()) == []


@pytest.mark.parametrize("stored", [event("a"), large_event()], ids=["small", "large"])
def test_put_fsyncs_the_event_before_the_rename_and_the_folder_after_it(
    spool: Spool, stored: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order is the promise: a rename that reaches the disk before the file's bytes can leave
    an empty or half event under its final name after a power cut, and a rename not followed by
    the folder's fsync can be undone by one after put returned (and the gateway answered 2xx).
    A small event (smaller than a file buffer: what webhooks are) and a large one (written
    straight through) both have every byte in the file when it is fsync'd."""
    size = len(json.dumps(stored, separators=(",", ":"), sort_keys=True).encode())
    calls = DurabilityCalls().install(monkeypatch)
    target = spool.put(stored)
    monkeypatch.undo()
    names = {target.stat().st_ino: "event file", spool.pending_dir.stat().st_ino: "pending/"}
    assert calls.steps(names) == [
        ("fsync", "event file", size),  # every byte of the event in the file when it is synced
        ("replace", "event file", target),
        ("fsync", "pending/", None),
    ]


@pytest.mark.parametrize(
    "content",
    [b'{"id": "trunc', b"\xff\xfe not utf-8", b"[1, 2]", b'{"id": "another-id"}'],
    ids=["truncated", "binary", "not an object", "wrong id"],
)
def test_a_corrupt_file_is_quarantined_with_a_log_line(
    spool: Spool, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    name = event("bad")["id"]
    (spool.pending_dir / f"{name}.json").write_bytes(content)
    [pending] = spool.pending()
    assert spool.read(pending) is None
    assert spool.pending() == []
    [moved] = spool.quarantine_dir.iterdir()
    assert moved.read_bytes() == content
    assert "quarantined" in caplog.text
    assert name in caplog.text


def test_a_full_spool_refuses_with_a_clear_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_events=2).open()
    spool.put(event("a"))
    spool.put(event("b"))
    with pytest.raises(SpoolFullError, match=r"full \(2 events: 2 pending"):
        spool.put(event("c"))
    spool.put(event("a"))  # already pending: takes no more room
    spool.mark_sent(event("a")["id"])
    # Sent is not stored yet: it still counts.
    with pytest.raises(SpoolFullError, match=r"full \(2 events: 1 pending, 1 sent"):
        spool.put(event("c"))
    spool.confirm(event("a")["id"])
    spool.put(event("c"))  # room again once one was stored by Prefect
    assert len(spool.pending()) == 2


def test_sent_events_count_towards_the_bytes_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000).open()
    spool.put(event("a", padding="x" * 600))
    spool.mark_sent(event("a")["id"])
    with pytest.raises(SpoolFullError, match="bytes"):
        spool.put(event("b", padding="x" * 600))


def test_a_spool_full_of_bytes_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000).open()
    spool.put(event("a"))
    with pytest.raises(SpoolFullError, match="bytes"):
        spool.put(event("b", padding="x" * 1000))


def test_an_id_that_could_escape_the_folder_is_refused(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="cannot name a spool file"):
        spool.put({"id": "../../etc/passwd"})


# Redelivery -------------------------------------------------------------------------------------


def test_deliver_now_marks_sent_on_success_and_keeps_the_event_on_failure(spool: Spool) -> None:
    receiver = Receiver(Delivery.RETRY)
    loop = redelivery(spool, receiver)
    spool.put(event("a"))
    assert loop.deliver(event("a")["id"]) is False
    assert spool.contains(event("a")["id"])
    receiver.answer = Delivery.ACCEPTED
    assert loop.deliver(event("a")["id"]) is True
    assert not spool.contains(event("a")["id"])
    assert [sent.event_id for sent in spool.sent()] == [event("a")["id"]]  # kept until stored
    assert receiver.received == [event("a")["id"]]


def test_the_loop_retries_until_the_receiver_accepts_then_delivers_each_once(
    spool: Spool,
) -> None:
    receiver = Receiver(Delivery.RETRY)
    for key in ("a", "b", "c"):
        spool.put(event(key))
    loop = redelivery(spool, receiver, first_delay=0.01, max_delay=0.05, confirm_every=0.05)
    loop.start()
    try:
        eventually(lambda: receiver.attempts >= 3, what="several attempts while refused")
        assert len(spool.pending()) == 3
        receiver.answer = Delivery.ACCEPTED
        eventually(lambda: held(spool) == 0, what="delivery once accepted, then confirmed")
    finally:
        loop.stop()
    assert sorted(receiver.received) == sorted(event(key)["id"] for key in ("a", "b", "c"))


def test_a_corrupt_file_never_stops_the_loop(spool: Spool) -> None:
    receiver = Receiver()
    (spool.pending_dir / f"{event('bad')['id']}.json").write_bytes(b"garbage")
    spool.put(event("good"))
    loop = redelivery(spool, receiver, first_delay=0.01, max_delay=0.05, confirm_every=0.05)
    loop.start()
    try:
        eventually(lambda: held(spool) == 0, what="the good event delivered and confirmed")
    finally:
        loop.stop()
    assert receiver.received == [event("good")["id"]]
    assert len(list(spool.quarantine_dir.iterdir())) == 1


def test_a_sender_that_raises_does_not_kill_the_loop(spool: Spool) -> None:
    calls: list[str] = []

    def flaky(sent: dict[str, Any]) -> Delivery:
        calls.append(sent["id"])
        if len(calls) == 1:
            raise RuntimeError("bug in a sender")
        return Delivery.ACCEPTED

    spool.put(event("a"))
    loop = Redelivery(spool, flaky, set, first_delay=0.01, max_delay=0.05)
    loop.start()
    try:
        eventually(lambda: spool.pending() == [], what="delivery after the sender raised")
    finally:
        loop.stop()
    assert calls == [event("a")["id"]] * 2


def test_a_rejected_event_is_quarantined_and_not_retried(spool: Spool) -> None:
    receiver = Receiver(Delivery.REJECTED)
    spool.put(event("a"))
    assert redelivery(spool, receiver).drain() is True
    assert held(spool) == 0
    assert len(list(spool.quarantine_dir.iterdir())) == 1
    assert receiver.attempts == 1


def test_deliver_skips_an_event_the_loop_already_delivered(spool: Spool) -> None:
    receiver = Receiver()
    loop = redelivery(spool, receiver)
    spool.put(event("a"))
    assert loop.drain() is True
    assert loop.deliver(event("a")["id"]) is True  # sent already: nothing sent twice
    assert receiver.received == [event("a")["id"]]


def test_read_of_an_event_delivered_meanwhile_is_none(spool: Spool) -> None:
    spool.put(event("a"))
    [pending] = spool.pending()
    spool.mark_sent(pending.event_id)
    assert spool.read(Pending(event_id=pending.event_id, path=pending.path)) is None
    assert list(spool.quarantine_dir.iterdir()) == []


# Confirmation: Prefect's 2xx is not the end; its event store is -------------------------------


def test_an_accepted_event_is_deleted_once_the_store_holds_it(spool: Spool) -> None:
    receiver = Receiver()
    loop = redelivery(spool, receiver)
    spool.put(event("a"))
    assert loop.deliver(event("a")["id"]) is True
    assert [sent.event_id for sent in spool.sent()] == [event("a")["id"]]
    assert loop.confirm() == 0
    assert held(spool) == 0
    assert receiver.lookups == [[event("a")["id"]]]
    assert receiver.received == [event("a")["id"]]  # sent once


def test_an_event_accepted_but_never_stored_is_sent_again_after_the_deadline_then_deleted(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """Prefect answers 204 and is killed before its persister writes: the event stays sent (not
    deleted) while the store lacks it, goes back to pending once it is overdue, with one log
    line naming it and why, is sent again under the same id, and is deleted once stored."""
    caplog.set_level("INFO", logger="gateway.spool")
    receiver = Receiver()
    receiver.loses_accepted = True
    loop = redelivery(spool, receiver)
    event_a = event("a")["id"]
    spool.put(event("a"))
    assert loop.deliver(event_a) is True
    assert loop.confirm() == 0  # missing, but not overdue: Prefect may still be writing it
    assert [sent.event_id for sent in spool.sent()] == [event_a]

    sent_long_ago(spool, event_a, seconds=CONFIRM_DEADLINE_SECONDS + 1)
    receiver.loses_accepted = False  # Prefect started again: it stores what it gets
    assert loop.confirm() == 1
    assert [pending.event_id for pending in spool.pending()] == [event_a]
    [line] = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
    assert line == f"sending event {event_a} again: sent 61 s ago, not in Prefect's event store"

    assert loop.drain() is True
    assert receiver.received == [event_a, event_a]  # the same id, sent again
    assert loop.confirm() == 0
    assert held(spool) == 0


def test_the_loop_sends_a_lost_event_again_and_forgets_it_once_stored(spool: Spool) -> None:
    """The same, with the background thread and a short deadline: nothing is deleted while the
    store lacks the event, however often Prefect accepted it."""
    receiver = Receiver()
    receiver.loses_accepted = True
    spool.put(event("a"))
    loop = redelivery(spool, receiver, first_delay=0.01, confirm_every=0.02, confirm_deadline=0.1)
    loop.start()
    try:
        eventually(lambda: receiver.received.count(event("a")["id"]) >= 3, what="sent again")
        assert held(spool) == 1
        receiver.loses_accepted = False
        eventually(lambda: held(spool) == 0, what="deleted once stored")
    finally:
        loop.stop()
    assert receiver.store == {event("a")["id"]}


def test_a_new_gateway_confirms_or_sends_again_what_a_previous_one_sent(
    spool: Spool, tmp_path: Path
) -> None:
    """Sent events survive the process: a new spool object and loop on the same folder, with no
    new request, deletes the one the store holds (not sending it again) and sends the one it
    lacks again, once overdue, until it is stored."""
    receiver = Receiver()
    first = redelivery(spool, receiver)
    spool.put(event("stored"))
    first.deliver(event("stored")["id"])
    receiver.loses_accepted = True
    spool.put(event("lost"))
    first.deliver(event("lost")["id"])
    receiver.loses_accepted = False
    sent_long_ago(spool, event("lost")["id"], seconds=CONFIRM_DEADLINE_SECONDS + 1)

    reopened = Spool(tmp_path / "spool").open()
    assert {sent.event_id for sent in reopened.sent()} == {
        event("stored")["id"],
        event("lost")["id"],
    }
    second = redelivery(reopened, receiver, first_delay=0.01, confirm_every=0.02)
    second.start()
    try:
        eventually(lambda: held(reopened) == 0, what="both confirmed, one after sending again")
    finally:
        second.stop()
    assert sorted(receiver.received) == sorted(
        [event("stored")["id"], event("lost")["id"], event("lost")["id"]]
    )


def test_nothing_is_sent_again_while_the_store_cannot_be_asked(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    receiver.loses_accepted = True
    loop = redelivery(spool, receiver)
    spool.put(event("a"))
    loop.deliver(event("a")["id"])
    sent_long_ago(spool, event("a")["id"], seconds=CONFIRM_DEADLINE_SECONDS + 1)
    receiver.store_down = True
    assert loop.confirm() == 0
    assert [sent.event_id for sent in spool.sent()] == [event("a")["id"]]
    assert "cannot ask Prefect's event store about 1 sent events" in caplog.text


def test_the_store_is_asked_in_batches_it_answers_whole(spool: Spool) -> None:
    receiver = Receiver()
    loop = redelivery(spool, receiver)
    keys = [f"k{number}" for number in range(CONFIRM_BATCH_SIZE * 2 + 3)]
    for key in keys:
        spool.put(event(key))
    assert loop.drain() is True
    assert loop.confirm() == 0
    assert held(spool) == 0
    assert [len(lookup) for lookup in receiver.lookups] == [
        CONFIRM_BATCH_SIZE,
        CONFIRM_BATCH_SIZE,
        3,
    ]
