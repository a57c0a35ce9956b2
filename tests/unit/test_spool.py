"""The event spool: what is stored survives whole or not at all, is read back and forgotten once
delivered, a damaged file is set aside without stopping delivery, and a full spool refuses."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.spool import Delivery, Pending, Redelivery, Spool, SpoolError, SpoolFullError
from lakeloop.events import event_id

DEADLINE_SECONDS = 20.0


def event(key: str = "a", **payload: object) -> dict[str, Any]:
    return {
        "id": event_id("lakefs.post-merge", "housing", "main", key),
        "event": "lakefs.post-merge",
        "occurred": "2026-11-23T10:00:00Z",
        "resource": {"prefect.resource.id": "lakefs.repository.housing"},
        "payload": {"commit_id": key, **payload},
    }


def eventually(check: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").open()


class Receiver:
    """A hand-written stand-in for Prefect: answers what it is told, records what it took."""

    def __init__(self, answer: Delivery = Delivery.DELIVERED) -> None:
        self.answer = answer
        self.received: list[str] = []
        self.attempts = 0
        self._lock = threading.Lock()

    def __call__(self, sent: dict[str, Any]) -> Delivery:
        with self._lock:
            self.attempts += 1
            if self.answer is Delivery.DELIVERED:
                self.received.append(sent["id"])
            return self.answer


# Storage ----------------------------------------------------------------------------------------


def test_put_read_ack_round_trip(spool: Spool) -> None:
    stored = event("a", rows=3)
    path = spool.put(stored)
    assert path.parent == spool.pending_dir
    [pending] = spool.pending()
    assert pending.event_id == stored["id"]
    assert spool.read(pending) == stored
    spool.ack(stored["id"])
    assert spool.pending() == []
    assert not spool.contains(stored["id"])
    spool.ack(stored["id"])  # idempotent


def test_the_same_id_twice_is_one_pending_event(spool: Spool) -> None:
    spool.put(event("a"))
    spool.put(event("a"))
    assert [p.event_id for p in spool.pending()] == [event("a")["id"]]


def test_pending_is_oldest_first_and_survives_a_new_spool_object(
    spool: Spool, tmp_path: Path
) -> None:
    for key in ("first", "second", "third"):
        spool.put(event(key))
        time.sleep(0.01)  # distinct modification times; the order itself is what is checked
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
    with pytest.raises(SpoolFullError, match=r"full \(2 events"):
        spool.put(event("c"))
    spool.put(event("a"))  # already pending: takes no more room
    spool.ack(event("a")["id"])
    spool.put(event("c"))  # room again once one was delivered
    assert len(spool.pending()) == 2


def test_a_spool_full_of_bytes_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000).open()
    spool.put(event("a"))
    with pytest.raises(SpoolFullError, match="bytes"):
        spool.put(event("b", padding="x" * 1000))


def test_an_id_that_could_escape_the_folder_is_refused(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="cannot name a spool file"):
        spool.put({"id": "../../etc/passwd"})


# Redelivery -------------------------------------------------------------------------------------


def test_deliver_now_acks_on_success_and_keeps_the_event_on_failure(spool: Spool) -> None:
    receiver = Receiver(Delivery.RETRY)
    redelivery = Redelivery(spool, receiver)
    spool.put(event("a"))
    assert redelivery.deliver(event("a")["id"]) is False
    assert spool.contains(event("a")["id"])
    receiver.answer = Delivery.DELIVERED
    assert redelivery.deliver(event("a")["id"]) is True
    assert not spool.contains(event("a")["id"])
    assert receiver.received == [event("a")["id"]]


def test_the_loop_retries_until_the_receiver_accepts_then_delivers_each_once(
    spool: Spool,
) -> None:
    receiver = Receiver(Delivery.RETRY)
    for key in ("a", "b", "c"):
        spool.put(event(key))
    redelivery = Redelivery(spool, receiver, first_delay=0.01, max_delay=0.05)
    redelivery.start()
    try:
        eventually(lambda: receiver.attempts >= 3, what="several attempts while refused")
        assert len(spool.pending()) == 3
        receiver.answer = Delivery.DELIVERED
        eventually(lambda: spool.pending() == [], what="delivery once accepted")
    finally:
        redelivery.stop()
    assert sorted(receiver.received) == sorted(event(key)["id"] for key in ("a", "b", "c"))


def test_a_corrupt_file_never_stops_the_loop(spool: Spool) -> None:
    receiver = Receiver()
    (spool.pending_dir / f"{event('bad')['id']}.json").write_bytes(b"garbage")
    spool.put(event("good"))
    redelivery = Redelivery(spool, receiver, first_delay=0.01, max_delay=0.05)
    redelivery.start()
    try:
        eventually(lambda: spool.pending() == [], what="the good event delivered")
    finally:
        redelivery.stop()
    assert receiver.received == [event("good")["id"]]
    assert len(list(spool.quarantine_dir.iterdir())) == 1


def test_a_sender_that_raises_does_not_kill_the_loop(spool: Spool) -> None:
    calls: list[str] = []

    def flaky(sent: dict[str, Any]) -> Delivery:
        calls.append(sent["id"])
        if len(calls) == 1:
            raise RuntimeError("bug in a sender")
        return Delivery.DELIVERED

    spool.put(event("a"))
    redelivery = Redelivery(spool, flaky, first_delay=0.01, max_delay=0.05)
    redelivery.start()
    try:
        eventually(lambda: spool.pending() == [], what="delivery after the sender raised")
    finally:
        redelivery.stop()
    assert calls == [event("a")["id"]] * 2


def test_a_rejected_event_is_quarantined_and_not_retried(spool: Spool) -> None:
    receiver = Receiver(Delivery.REJECTED)
    spool.put(event("a"))
    assert Redelivery(spool, receiver).drain() is True
    assert spool.pending() == []
    assert len(list(spool.quarantine_dir.iterdir())) == 1
    assert receiver.attempts == 1


def test_deliver_skips_an_event_the_loop_already_delivered(spool: Spool) -> None:
    receiver = Receiver()
    redelivery = Redelivery(spool, receiver)
    spool.put(event("a"))
    assert redelivery.drain() is True
    assert redelivery.deliver(event("a")["id"]) is True  # gone: nothing sent twice
    assert receiver.received == [event("a")["id"]]


def test_read_of_an_event_delivered_meanwhile_is_none(spool: Spool) -> None:
    spool.put(event("a"))
    [pending] = spool.pending()
    spool.ack(pending.event_id)
    assert spool.read(Pending(event_id=pending.event_id, path=pending.path)) is None
    assert list(spool.quarantine_dir.iterdir()) == []
