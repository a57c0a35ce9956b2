"""A durable spool of events on their way to Prefect, and the loop that redelivers them.

Prefect drops an event sent while it is down with only a log line, and lakeFS only logs a failed
post-commit/post-merge hook: a webhook answered before its event reached Prefect, and not written
anywhere, would be a training silently lost. So the gateway writes each event here first (one
file per event, fsync'd, renamed into place atomically), answers 2xx, and hands it to Prefect; a
background :class:`Redelivery` retries what is still pending, with a bounded backoff, until
Prefect accepts it, including after a restart of the gateway (it drains the spool on start).

Layout under the spool folder (``<state_dir>/spool``):

- ``pending/<event id>.json``: accepted, not yet delivered. The file name is the event's
  deterministic id, so the same webhook sent twice is one pending event.
- ``tmp/``: files being written; a crash before the rename leaves only a file here, which the next
  start deletes. A half-written event never appears under ``pending/``.
- ``quarantine/``: files that cannot be read back as an event, or that Prefect refused as
  malformed; moved aside with a log line, never retried, never crashing the loop.

A delivered event's file is deleted. The spool is bounded (events and bytes): when it is full,
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
"""Most pending events; about 2 kB each, so a spool this full holds about 20 MB."""
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Most bytes of pending events (a guard against a few huge ones)."""
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


class Spool:
    """Events stored on disk until Prefect accepted them. Safe to use from several threads of one
    process; two processes on one folder may deliver an event twice, which its id makes harmless.
    """

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
        self.tmp_dir = folder / "tmp"
        self.quarantine_dir = folder / "quarantine"
        self._lock = threading.Lock()

    def open(self) -> Spool:
        """Create the folders and delete what a crash left half written; returns ``self``.
        Called by the process that owns the spool at start-up (never at import)."""
        for folder in (self.pending_dir, self.tmp_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            logger.warning("deleting %s: an event half written when the process stopped", leftover)
            leftover.unlink(missing_ok=True)
        return self

    def put(self, event: dict[str, Any]) -> Path:
        """Store ``event`` durably under ``pending/`` and return its path. The same id stored
        twice is one file. Raises :class:`SpoolFullError` when the spool is full and
        :class:`SpoolError` when the disk refuses the write."""
        event_id = str(event.get("id", ""))
        if not _SAFE_ID.match(event_id):
            raise SpoolError(f"event id {event_id!r} cannot name a spool file")
        data = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        target = self._path(event_id)
        with self._lock:
            if not target.exists():
                self._check_room(len(data))
            temporary = self.tmp_dir / f"{event_id}.{uuid.uuid4().hex}.json"
            try:
                _write_synced(temporary, data)
                os.replace(temporary, target)
                _sync_folder(self.pending_dir)
            except OSError as error:
                temporary.unlink(missing_ok=True)
                raise SpoolError(
                    f"cannot store event {event_id} in {self.folder}: {error}"
                ) from error
        return target

    def _check_room(self, size: int) -> None:
        count, used = self.usage()
        if count + 1 > self.max_events or used + size > self.max_bytes:
            raise SpoolFullError(
                f"event spool {self.pending_dir} is full ({count} events, {used} bytes pending; "
                f"limits {self.max_events} events, {self.max_bytes} bytes): Prefect has not "
                "accepted events for a while"
            )

    def usage(self) -> tuple[int, int]:
        """Pending events and their bytes."""
        count = used = 0
        for entry in os.scandir(self.pending_dir):
            with contextlib.suppress(FileNotFoundError):  # delivered meanwhile
                used += entry.stat().st_size
                count += 1
        return count, used

    def pending(self) -> list[Pending]:
        """Every pending event, oldest first (by when it was stored)."""
        found = []
        for entry in os.scandir(self.pending_dir):
            if not entry.name.endswith(".json"):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
        return [Pending(event_id=path.stem, path=path) for _, _, path in sorted(found)]

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

    def ack(self, event_id: str) -> None:
        """Forget a delivered event (idempotent)."""
        self._path(event_id).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            _sync_folder(self.pending_dir)

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


def _write_synced(path: Path, data: bytes) -> None:
    """Write a new file and flush it to the disk before returning."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (POSIX needs the directory fsync'd)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Delivery(enum.Enum):
    """What the receiver said to one delivery attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    """Unreachable, overloaded, misconfigured: try again later."""
    REJECTED = "rejected"
    """The event itself is refused (malformed): retrying cannot help; quarantine it."""


Sender = Callable[[dict[str, Any]], Delivery]
"""One attempt to hand an event to Prefect."""


class Redelivery:
    """Hands spooled events to ``send``: right away for a new one (:meth:`deliver`), and from a
    background thread for whatever is pending, retrying with an exponential backoff from
    ``first_delay`` to ``max_delay`` seconds while the receiver refuses, forever. The thread
    drains the spool as soon as it starts, so events left by a previous process go first."""

    def __init__(
        self,
        spool: Spool,
        send: Sender,
        *,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        idle_seconds: float = 30.0,
    ) -> None:
        self.spool = spool
        self.send = send
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.idle_seconds = idle_seconds
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
        """Stop the thread; what is still pending stays on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Ask the thread to try now (a new event was stored)."""
        self._wake.set()

    def deliver(self, event_id: str) -> bool:
        """One attempt to deliver a just-stored event from the caller's thread; True when it is
        no longer pending (delivered now, or by the thread meanwhile). On failure the event stays
        pending and the thread is woken to retry it."""
        if not self._claim(event_id):
            return False  # the thread is delivering it right now
        try:
            if not self.spool.contains(event_id):
                return True
            pending = Pending(event_id=event_id, path=self.spool.pending_dir / f"{event_id}.json")
            delivered = self._attempt(pending)
        finally:
            self._release(event_id)
        if not delivered:
            self.wake()
        return delivered

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

    def _attempt(self, pending: Pending) -> bool:
        """Send one pending event; True when it left the spool (delivered or quarantined)."""
        event = self.spool.read(pending)
        if event is None:
            return True  # delivered meanwhile, or quarantined as unreadable
        try:
            outcome = self.send(event)
        except Exception:  # a bug in a sender must not kill the loop; the event stays pending
            logger.exception("sending spooled event %s failed", pending.event_id)
            outcome = Delivery.RETRY
        if outcome is Delivery.DELIVERED:
            self.spool.ack(pending.event_id)
            return True
        if outcome is Delivery.REJECTED:
            self.spool.quarantine(pending, reason="the receiver refused the event as malformed")
            return True
        return False

    def _run(self) -> None:
        delay = self.first_delay
        while not self._stop.is_set():
            self._wake.clear()  # before draining: a wake during the drain means "look again"
            try:
                clear = self.drain()
            except Exception:  # e.g. the folder vanished; keep the thread alive and retry
                logger.exception("redelivering spooled events failed")
                clear = False
            if clear:
                delay = self.first_delay
                self._wake.wait(self.idle_seconds)
            else:
                count, _ = self._usage()
                logger.warning(
                    "%d spooled events not delivered yet; retrying in %.1f s", count, delay
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_delay)

    def _usage(self) -> tuple[int, int]:
        try:
            return self.spool.usage()
        except OSError:
            return (0, 0)

    def _claim(self, event_id: str) -> bool:
        with self._claims_lock:
            if event_id in self._claims:
                return False
            self._claims.add(event_id)
            return True

    def _release(self, event_id: str) -> None:
        with self._claims_lock:
            self._claims.discard(event_id)
