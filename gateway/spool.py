"""A durable spool of events on their way to Prefect, and the loop that redelivers them.

Prefect drops an event sent while it is down with only a log line, and lakeFS only logs a failed
post-commit/post-merge hook: a webhook answered before its event reached Prefect, and not written
anywhere, would be a training silently lost. So the gateway writes each event here first (one
file per event, fsync'd, renamed into place atomically), answers 2xx, and hands it to Prefect; a
background :class:`Redelivery` retries what is still pending, with a bounded backoff, until
Prefect accepts it, including after a restart of the gateway (it drains the spool on start).

Prefect's 2xx is not the end: ``POST /api/events`` puts the event on an in-memory topic and answers
204 before anything is written (``prefect/server/api/events.py``, ``create_events``); its event
persister writes in batches, every 5 s or every 20 events
(``events/services/event_persister.py``, ``create_handler``). A Prefect SIGKILLed, OOM-killed or
put to sleep between the two has lost the event although it answered 204. So an accepted event is
not deleted but moved to ``sent/``, and the loop asks Prefect's event store for it
(:data:`StoredLookup`, ``POST /api/events/filter`` by id): found, its file is deleted; still
missing :data:`CONFIRM_DEADLINE_SECONDS` after it was sent, it goes back to ``pending/`` and is
sent again under the same id. Sending again is right either way: if the first copy is still in
flight, Prefect's publisher drops the repeat by its id; if Prefect restarted, the first copy is
gone. And the store keeps one row per id (``ON CONFLICT DO NOTHING``). A duplicate trigger firing
(Prefect forgets ids when it restarts) is absorbed by the flows' own checks: a commit trains once,
a drift or alert window is folded once.

Layout under the spool folder (``<state_dir>/spool``):

- ``pending/<event id>.json``: accepted, not yet delivered. The file name is the event's
  deterministic id, so the same webhook sent twice is one pending event.
- ``sent/<event id>.json``: Prefect answered 2xx, its event store has not shown the event yet. The
  file's modification time is when it was sent (stamped just before the move, so it survives a
  restart of the gateway); a stamp lost in a crash only makes the event look older, which means
  it is looked up, and sent again if missing, sooner: never lost.
- ``tmp/``: files being written; a crash before the rename leaves only a file here, which the next
  start deletes. A half-written event never appears under ``pending/``.
- ``quarantine/``: files that cannot be read back as an event, or that Prefect refused as
  malformed; moved aside with a log line, never retried, never crashing the loop.

An event's file is deleted once Prefect's event store holds it. The same id is one file in the
spool, whichever folder holds it: a repeat of an event already sent waits for that one's answer.
The spool is bounded (events and bytes, pending and sent together): when it is full,
:meth:`Spool.put` raises :class:`SpoolFullError` and the gateway answers 503, so the sender sees
the failure instead of an event dropped on the floor.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MAX_EVENTS = 10_000
"""Most events held (pending and sent); about 2 kB each, so a spool this full holds about 20 MB."""
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Most bytes of events held (a guard against a few huge ones)."""
CONFIRM_DEADLINE_SECONDS = 60.0
"""How long after Prefect accepted an event (2xx) its event store may take to show it before the
event is sent again. Prefect's persister writes at least every 5 s
(``server.services.event_persister.flush_interval``) and puts a failed write (SQLite's "database
is locked") back for the next flush, up to 5 times (``max_flush_retries``): about 30 s in the
worst case a healthy server has; twice that, so a slow server is not flooded with repeats."""
CONFIRM_EVERY_SECONDS = 5.0
"""How often the loop asks Prefect's event store about sent events (its persister's interval)."""
CONFIRM_BATCH_SIZE = 50
"""Most ids asked about in one request: ``/events/filter`` answers at most 50 events
(``limit <= INTERACTIVE_PAGE_SIZE``, ``prefect/server/events/storage/__init__.py``)."""
# Event ids are uuid5 strings; anything else as a file name could escape the folder.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SpoolError(RuntimeError):
    """An event could not be stored durably; the message says where and why."""


class SpoolFullError(SpoolError):
    """The spool holds as many events (or bytes) as it may: refuse, do not drop."""


@dataclass(frozen=True)
class Pending:
    """One stored, not yet delivered event."""

    event_id: str
    path: Path


@dataclass(frozen=True)
class Sent:
    """One event Prefect accepted (2xx) and its event store has not shown yet."""

    event_id: str
    path: Path
    sent_at: float
    """When it was sent, in seconds since the epoch (the file's modification time)."""


@dataclass(frozen=True)
class Usage:
    """What the spool holds."""

    pending: int
    """Events not yet accepted by Prefect."""
    sent: int
    """Events accepted by Prefect and not yet seen in its event store."""
    bytes: int
    """Bytes of both."""

    @property
    def events(self) -> int:
        return self.pending + self.sent


class Spool:
    """Events stored on disk until Prefect's event store holds them. Safe to use from several
    threads of one process; two processes on one folder may deliver an event twice, which its id
    makes harmless."""

    def __init__(
        self,
        folder: Path,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.folder = folder
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.pending_dir = folder / "pending"
        self.sent_dir = folder / "sent"
        self.tmp_dir = folder / "tmp"
        self.quarantine_dir = folder / "quarantine"
        self._lock = threading.Lock()

    def open(self) -> Spool:
        """Create the folders and delete what a crash left half written; returns ``self``.
        Called by the process that owns the spool at start-up (never at import)."""
        for folder in (self.pending_dir, self.sent_dir, self.tmp_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            logger.warning("deleting %s: an event half written when the process stopped", leftover)
            leftover.unlink(missing_ok=True)
        return self

    def put(self, event: dict[str, Any]) -> Path:
        """Store ``event`` durably under ``pending/`` and return its path. The same id stored
        twice is one file; an id already sent is left to that copy (its path is returned).
        Raises :class:`SpoolFullError` when the spool is full and :class:`SpoolError` when the
        disk refuses the write."""
        event_id = str(event.get("id", ""))
        if not _SAFE_ID.match(event_id):
            raise SpoolError(f"event id {event_id!r} cannot name a spool file")
        data = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        target = self._path(event_id)
        with self._lock:
            if self._sent_path(event_id).exists():
                return self._sent_path(event_id)  # confirmed, or sent again, by the loop
            if not target.exists():
                self._check_room(len(data))
            temporary = self.tmp_dir / f"{event_id}.{uuid.uuid4().hex}.json"
            try:
                _write_synced(temporary, data)
                os.replace(temporary, target)
                _sync(self.pending_dir)
            except OSError as error:
                temporary.unlink(missing_ok=True)
                raise SpoolError(
                    f"cannot store event {event_id} in {self.folder}: {error}"
                ) from error
        return target

    def _check_room(self, size: int) -> None:
        usage = self.usage()
        if usage.events + 1 > self.max_events or usage.bytes + size > self.max_bytes:
            raise SpoolFullError(
                f"event spool {self.folder} is full ({usage.events} events: {usage.pending} "
                f"pending, {usage.sent} sent and not yet in Prefect's event store; {usage.bytes} "
                f"bytes; limits {self.max_events} events, {self.max_bytes} bytes): Prefect has "
                "not accepted or not stored events for a while"
            )

    def usage(self) -> Usage:
        """How many events are pending and sent, and their bytes."""
        counts = []
        used = 0
        for folder in (self.pending_dir, self.sent_dir):
            count = 0
            for entry in os.scandir(folder):
                with contextlib.suppress(FileNotFoundError):  # moved or deleted meanwhile
                    used += entry.stat().st_size
                    count += 1
            counts.append(count)
        return Usage(pending=counts[0], sent=counts[1], bytes=used)

    def pending(self) -> list[Pending]:
        """Every pending event, oldest first (by when it was stored)."""
        return [Pending(event_id=path.stem, path=path) for _, path in _by_time(self.pending_dir)]

    def sent(self) -> list[Sent]:
        """Every sent event not yet seen in Prefect's event store, longest sent first."""
        return [
            Sent(event_id=path.stem, path=path, sent_at=mtime / 1e9)
            for mtime, path in _by_time(self.sent_dir)
        ]

    def contains(self, event_id: str) -> bool:
        """Whether this event is still waiting for delivery."""
        return self._path(event_id).exists()

    def read(self, pending: Pending) -> dict[str, Any] | None:
        """The stored event; ``None`` when it was delivered meanwhile, or when the file is not a
        readable event (it is then quarantined with a log line)."""
        try:
            raw = pending.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            event = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            self.quarantine(pending, reason=f"not JSON: {error}")
            return None
        if not isinstance(event, dict) or event.get("id") != pending.event_id:
            self.quarantine(pending, reason="not an event with the id its file name says")
            return None
        return event

    def mark_sent(self, event_id: str) -> None:
        """Prefect accepted this pending event: move it to ``sent/``, stamped with the time now,
        to wait for its event store to show it (idempotent)."""
        with self._lock:
            source = self._path(event_id)
            now = time.time_ns()
            try:
                os.utime(source, ns=(now, now))
                _sync(source)  # the stamp is on the disk before the file is seen as sent
                _move_synced(source, self._sent_path(event_id))
            except FileNotFoundError:
                return  # moved already

    def confirm(self, event_id: str) -> None:
        """Prefect's event store holds this sent event: forget it (idempotent)."""
        with self._lock:
            self._sent_path(event_id).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _sync(self.sent_dir)

    def resend(self, event_id: str) -> None:
        """Prefect accepted this event but did not store it: back to ``pending/`` to be sent
        again (idempotent)."""
        with self._lock, contextlib.suppress(FileNotFoundError):
            _move_synced(self._sent_path(event_id), self._path(event_id))

    def quarantine(self, pending: Pending, *, reason: str) -> Path | None:
        """Move a file that must never be retried out of ``pending/``; returns where it went."""
        target = self.quarantine_dir / f"{pending.path.stem}.{time.time_ns()}.json"
        try:
            os.replace(pending.path, target)
        except FileNotFoundError:
            return None
        logger.error("quarantined spooled event file %s as %s: %s", pending.path, target, reason)
        return target

    def _path(self, event_id: str) -> Path:
        return self.pending_dir / f"{event_id}.json"

    def _sent_path(self, event_id: str) -> Path:
        return self.sent_dir / f"{event_id}.json"


def _by_time(folder: Path) -> list[tuple[int, Path]]:
    """The events in ``folder`` with their files' modification times (ns), oldest first (by
    name among equals); a file moved or deleted meanwhile is left out."""
    found = []
    for entry in os.scandir(folder):
        if not entry.name.endswith(".json"):
            continue
        with contextlib.suppress(FileNotFoundError):
            found.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
    return [(mtime, path) for mtime, _, path in sorted(found)]


def _write_synced(path: Path, data: bytes) -> None:
    """Write a new file and flush it to the disk before returning."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync(path: Path) -> None:
    """fsync a file's metadata, or a folder to make a rename or unlink in it durable (POSIX needs
    the directory fsync'd)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _move_synced(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` atomically (one folder to another in the spool) and make
    the rename durable in both folders."""
    os.replace(source, target)
    _sync(target.parent)
    _sync(source.parent)


class Delivery(enum.Enum):
    """What the receiver said to one delivery attempt."""

    ACCEPTED = "accepted"
    """Prefect answered 2xx: the event is on its way to the event store, not yet in it."""
    RETRY = "retry"
    """Unreachable, overloaded, misconfigured: try again later."""
    REJECTED = "rejected"
    """The event itself is refused (malformed): retrying cannot help; quarantine it."""


Sender = Callable[[dict[str, Any]], Delivery]
"""One attempt to hand an event to Prefect."""
StoredLookup = Callable[[list[str]], set[str]]
"""Which of these event ids Prefect's event store holds (at most :data:`CONFIRM_BATCH_SIZE`);
raises when the store cannot be asked now."""


class Redelivery:
    """Hands spooled events to ``send``: right away for a new one (:meth:`deliver`), and from a
    background thread for whatever is pending, retrying with an exponential backoff from
    ``first_delay`` to ``max_delay`` seconds while the receiver refuses, forever. The same thread
    asks ``stored`` about accepted events every ``confirm_every`` seconds (:meth:`confirm`):
    those stored are forgotten, those still missing ``confirm_deadline`` seconds after they were
    sent are sent again. The thread drains the spool and looks up what was sent as soon as it
    starts, so events left by a previous process go first."""

    def __init__(
        self,
        spool: Spool,
        send: Sender,
        stored: StoredLookup,
        *,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        idle_seconds: float = 30.0,
        confirm_every: float = CONFIRM_EVERY_SECONDS,
        confirm_deadline: float = CONFIRM_DEADLINE_SECONDS,
    ) -> None:
        self.spool = spool
        self.send = send
        self.stored = stored
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.idle_seconds = idle_seconds
        self.confirm_every = confirm_every
        self.confirm_deadline = confirm_deadline
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._claims: set[str] = set()
        self._claims_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="event-redelivery", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; what is still pending or sent stays on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Ask the thread to try now (a new event was stored)."""
        self._wake.set()

    def deliver(self, event_id: str) -> bool:
        """One attempt to deliver a just-stored event from the caller's thread; True when it is
        no longer pending (accepted now, or by the thread meanwhile, or sent before). The thread
        is woken either way: to retry the event, or to look it up in Prefect's store."""
        if not self._claim(event_id):
            return False  # the thread is delivering it right now
        try:
            if not self.spool.contains(event_id):
                return True
            pending = Pending(event_id=event_id, path=self.spool.pending_dir / f"{event_id}.json")
            return self._attempt(pending)
        finally:
            self._release(event_id)
            self.wake()

    def drain(self) -> bool:
        """Try every pending event once, oldest first; stop at the first the receiver cannot take
        now (it is down: no point hammering it with the rest). True when nothing is left that
        needs a retry."""
        for pending in self.spool.pending():
            if self._stop.is_set():
                return False
            if not self._claim(pending.event_id):
                continue
            try:
                if not self._attempt(pending) and self.spool.contains(pending.event_id):
                    return False
            finally:
                self._release(pending.event_id)
        return True

    def confirm(self) -> int:
        """Look every sent event up in Prefect's event store, in batches: a stored one is
        forgotten; one missing :attr:`confirm_deadline` seconds after it was sent goes back to
        pending, with a log line. Returns how many went back. When the store cannot be asked,
        the rest waits for the next round (nothing is sent again on a guess)."""
        sent = self.spool.sent()
        resent = 0
        for start in range(0, len(sent), CONFIRM_BATCH_SIZE):
            batch = sent[start : start + CONFIRM_BATCH_SIZE]
            asked_at = time.time()  # before asking: a later answer is not older than this
            try:
                stored = self.stored([each.event_id for each in batch])
            except Exception as error:  # Prefect down or failing: ask again next round
                logger.warning(
                    "cannot ask Prefect's event store about %d sent events: %s", len(sent), error
                )
                return resent
            resent += sum(self._settle(each, stored=stored, asked_at=asked_at) for each in batch)
        return resent

    def _settle(self, sent: Sent, *, stored: set[str], asked_at: float) -> bool:
        """Forget ``sent`` if stored, send it again if overdue; True when it went back."""
        if not self._claim(sent.event_id):
            return False
        try:
            if sent.event_id in stored:
                self.spool.confirm(sent.event_id)
                return False
            waited = asked_at - sent.sent_at
            if waited < self.confirm_deadline:
                return False
            logger.info(
                "sending event %s again: sent %.0f s ago, not in Prefect's event store",
                sent.event_id,
                waited,
            )
            self.spool.resend(sent.event_id)
            return True
        finally:
            self._release(sent.event_id)

    def _attempt(self, pending: Pending) -> bool:
        """Send one pending event; True when it left ``pending/`` (sent, or quarantined)."""
        event = self.spool.read(pending)
        if event is None:
            return True  # sent meanwhile, or quarantined as unreadable
        try:
            outcome = self.send(event)
        except Exception:  # a bug in a sender must not kill the loop; the event stays pending
            logger.exception("sending spooled event %s failed", pending.event_id)
            outcome = Delivery.RETRY
        if outcome is Delivery.ACCEPTED:
            self.spool.mark_sent(pending.event_id)
            return True
        if outcome is Delivery.REJECTED:
            self.spool.quarantine(pending, reason="the receiver refused the event as malformed")
            return True
        return False

    def _run(self) -> None:
        delay = self.first_delay
        next_confirm = 0.0  # monotonic; at once on start: what a previous process sent
        while not self._stop.is_set():
            self._wake.clear()  # before draining: a wake during the drain means "look again"
            resent = 0
            try:
                clear = self.drain()
                if clear and time.monotonic() >= next_confirm:
                    resent = self.confirm()
                    next_confirm = time.monotonic() + self.confirm_every
            except Exception:  # e.g. the folder vanished; keep the thread alive and retry
                logger.exception("redelivering spooled events failed")
                clear = False
            if resent:
                continue  # send them now
            if clear:
                delay = self.first_delay
                waiting = self._usage().sent
                self._wake.wait(
                    max(0.0, next_confirm - time.monotonic()) if waiting else self.idle_seconds
                )
            else:
                logger.warning(
                    "%d spooled events not delivered yet; retrying in %.1f s",
                    self._usage().pending,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_delay)

    def _usage(self) -> Usage:
        try:
            return self.spool.usage()
        except OSError:
            return Usage(pending=0, sent=0, bytes=0)

    def _claim(self, event_id: str) -> bool:
        with self._claims_lock:
            if event_id in self._claims:
                return False
            self._claims.add(event_id)
            return True

    def _release(self, event_id: str) -> None:
        with self._claims_lock:
            self._claims.discard(event_id)
