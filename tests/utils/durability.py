"""Record the calls that make a file durable, in the order they happen, to check that order.

A SIGKILL does not lose the page cache, so a crash test cannot tell whether a writer fsyncs: only
the order of its calls shows it. :class:`DurabilityCalls` wraps ``os.fsync`` and ``os.replace``
(and ``os.write``, for writers that use it) and records each call with the file it touched,
named by its inode: a temporary file keeps its inode when it is renamed into place, so the steps
of one file line up however its name changed. At each ``fsync`` the file's size is recorded too:
the bytes a writer still holds in a Python buffer are not in the file yet, so they are not what
the fsync made durable. With :meth:`DurabilityCalls.install_sqlite` the statements of every
SQLite connection opened meanwhile join the same sequence, so a row can be placed against the
file it names.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Call:
    """One recorded call. ``size`` is the file's size at an ``fsync`` (``None`` for a folder)
    or the bytes passed to a ``write``; ``target`` is where a ``replace`` put the file."""

    name: str
    inode: int
    size: int | None = None
    target: Path | None = None
    statement: str | None = None
    """For ``sql``: the statement as SQLite ran it (parameters filled in)."""
    connection: int | None = None
    """For ``sql``: which connection ran it (numbered as they were opened)."""


class DurabilityCalls:
    """Install with :meth:`install`; read :attr:`calls` or :meth:`steps`. Safe across threads."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> DurabilityCalls:
        """Wrap ``os.fsync``, ``os.replace`` and ``os.write`` until the test ends."""
        fsync, replace, write = os.fsync, os.replace, os.write

        def recording_fsync(fd: Any) -> None:
            status = os.fstat(fd if isinstance(fd, int) else fd.fileno())
            folder = stat.S_ISDIR(status.st_mode)
            self._add(Call("fsync", status.st_ino, None if folder else status.st_size))
            fsync(fd)

        def recording_replace(source: Any, target: Any, **kwargs: Any) -> None:
            inode = os.stat(source).st_ino
            replace(source, target, **kwargs)
            self._add(Call("replace", inode, target=Path(target)))

        def recording_write(fd: int, data: Any) -> int:
            written = write(fd, data)
            self._add(Call("write", os.fstat(fd).st_ino, written))
            return written

        monkeypatch.setattr(os, "fsync", recording_fsync)
        monkeypatch.setattr(os, "replace", recording_replace)
        monkeypatch.setattr(os, "write", recording_write)
        return self

    def install_sqlite(self, monkeypatch: pytest.MonkeyPatch) -> DurabilityCalls:
        """Record, as ``sql`` calls, every statement of the SQLite connections opened from now
        until the test ends (``sqlite3.connect`` is wrapped)."""
        connect = sqlite3.connect
        numbers = itertools.count(1)

        def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            connection = connect(*args, **kwargs)
            number = next(numbers)
            connection.set_trace_callback(
                lambda statement: self._add(
                    Call("sql", 0, statement=statement.strip(), connection=number)
                )
            )
            return connection

        monkeypatch.setattr(sqlite3, "connect", recording_connect)
        return self

    def _add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def steps(self, names: dict[int, str]) -> list[tuple[str, str, object]]:
        """The calls on the inodes of ``names`` (inode -> a readable name), in order, as
        ``(call, file, size or target)`` tuples an assertion can compare whole."""
        with self._lock:
            calls = list(self.calls)
        return [
            (call.name, names[call.inode], call.target if call.name == "replace" else call.size)
            for call in calls
            if call.inode in names
        ]
