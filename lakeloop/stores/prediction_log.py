"""Every prediction (and every reported actual value) on disk, without slowing a request.

A request hands its rows to a bounded in-memory queue and returns; when the queue is full the
rows are dropped and counted, never waited for. A background thread drains the queue into Parquet
segments under ``predictions/`` (and ``feedback/``) in the object store (a local folder or an S3
bucket, :mod:`lakeloop.stores.objects`), one object per flush, named by the time it was written so
a reader can skip old ones by name. Stopping flushes what is queued.

A segment that cannot be written (a full disk, a folder gone or unwritable, a bucket unreachable)
loses its rows: they
are counted, the writer remembers the error until a write succeeds again (``/readyz`` shows it),
and the thread goes on with the next flush. Keeping failed rows to retry would only move the loss
to the bounded queue, and one bad entry would then fail every later flush too.

Feedback names a prediction by its id, and :class:`LogLookup` says whether that prediction was
made (and what was last reported for it) without a second copy of the ids: it looks in what this
process has not written yet (the writers' queues) and in the few segments, of any replica sharing
the store, whose names can hold it (a segment is named by when it was written, soon after).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, groupby
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeloop.dataset import DatasetSpec, attribute
from lakeloop.stores.objects import ObjectStore

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
_STAMP = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class Entry:
    """What one request adds to the log: its rows, as records or as columns."""

    at: datetime
    model_name: str
    model_version: str
    prediction_ids: list[str]
    predictions: np.ndarray
    records: Sequence[Any] = ()
    """Decoded records (objects with one attribute per feature) ..."""
    columns: Mapping[str, Sequence[Any]] | None = None
    """... or one sequence per feature."""
    matrix: np.ndarray | None = None
    """The encoded matrix the model saw, when there is one: numbers are logged from it (so as
    the float32 values the model used, not the decimal text that was sent)."""
    matrix_names: tuple[str, ...] = ()
    spec: DatasetSpec | None = None
    """The description the records were decoded under (the served model's), when it is not the
    one the log was opened with."""

    @property
    def rows(self) -> int:
        return len(self.prediction_ids)


@dataclass(frozen=True)
class FeedbackEntry:
    at: datetime
    prediction_id: str | None
    actual: float
    ids: Mapping[str, Any] | None = None
    """The record's own ids, when it is named by them instead of by ``prediction_id``."""
    client: str | None = None
    """The name of the client that reported it (its token's name in the settings)."""
    replaces: float | None = None
    """The value the latest earlier report for the same prediction id gave, when this one
    corrects it (readers take the latest report)."""

    @property
    def rows(self) -> int:
        return 1


class SegmentWriter:
    """A bounded queue drained by a thread into Parquet segments in ``store``."""

    def __init__(
        self,
        store: ObjectStore,
        to_table: Callable[[list[Any]], pa.Table],
        *,
        max_rows: int,
        flush_rows: int,
        flush_seconds: float,
        on_drop: Callable[[int], None] = lambda _: None,
        on_write_error: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.to_table = to_table
        self.max_rows = max_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop
        self.on_write_error = on_write_error
        """Called with the number of rows lost each time a segment cannot be written."""
        self.dropped = 0
        self.write_errors = 0
        self.lost_rows = 0
        self.last_error = ""
        """Why the last write failed; empty once a segment is written again."""
        self._queue: deque[Any] = deque()
        self._queued_rows = 0
        self._writing: list[Any] = []
        """The entries of the segment being written: out of the queue, not yet in the store."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        """Held through a whole flush: one segment is written at a time (the thread's, or a
        caller's), so :attr:`_writing` is always the one being written."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def pending(self) -> list[Any]:
        """The entries not in a segment yet (being written, then queued), oldest first: a
        snapshot of the lists taken under the lock (entries are immutable), so a reader sees
        what the store does not hold yet."""
        with self._lock:
            return [*self._writing, *self._queue]

    def put(self, entry: Any) -> bool:
        """Queue an entry; False (and counted) when the queue is full. Never blocks on I/O."""
        with self._lock:
            if self._queued_rows + entry.rows > self.max_rows:
                self.dropped += entry.rows
                dropped = True
            else:
                self._queue.append(entry)
                self._queued_rows += entry.rows
                dropped = False
        if dropped:
            self.on_drop(entry.rows)
        elif self._queued_rows >= self.flush_rows:
            self._wake.set()
        return not dropped

    def start(self) -> None:
        """Start the background writer."""
        self._thread = threading.Thread(
            target=self._run, name=f"log-{self.store.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Flush everything queued and stop the writer."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.flush()

    @property
    def failing(self) -> bool:
        """True from a failed write until the next successful one."""
        return bool(self.last_error)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # flush counts its own failures; nothing else may kill the thread
                logger.exception("the %s writer failed", self.store.name)

    def flush(self) -> str | None:
        """Write what is queued as one segment; where it went, or ``None`` when nothing was
        queued or the write failed (its rows are then lost and counted)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> str | None:
        with self._lock:
            entries = self._writing = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        if not entries:
            return None
        self._sequence += 1
        # Stamped after every entry in it was queued: a segment is named no earlier than its rows.
        stamp = datetime.now(UTC).strftime(_STAMP)
        key = f"{stamp}-{os.getpid()}-{self._sequence:06d}.parquet"
        try:
            table = self.to_table(entries)
            buffer = io.BytesIO()
            pq.write_table(table, buffer, use_dictionary=_repeating_columns(table))
            written = self.store.put(key, buffer.getvalue())  # readers never see half a segment
        except Exception as error:
            self._lost(sum(entry.rows for entry in entries), error)
            return None
        finally:
            with self._lock:
                self._writing = []
        if self.last_error:
            logger.warning("%s segments are written again", self.store.name)
            self.last_error = ""
        return written

    def _lost(self, rows: int, error: Exception) -> None:
        if not self.last_error:  # once per outage, not once per flush
            logger.error(
                "cannot write %s segments (%s); their rows are lost", self.store.url, error
            )
        self.last_error = f"{type(error).__name__}: {error}"
        self.write_errors += 1
        self.lost_rows += rows
        self.on_write_error(rows)


def _repeating_columns(table: pa.Table) -> list[str]:
    """The columns worth dictionary-encoding: strings that repeat (model, version, categories).
    Numbers and prediction ids hardly ever do, and trying costs more than the rest of the write."""
    return [
        field.name
        for field in table.schema
        if pa.types.is_string(field.type) and field.name != "prediction_id"
    ]


def _feature_chunks(
    entries: list[Entry], spec: DatasetSpec
) -> dict[str, list[Sequence[Any] | np.ndarray]]:
    """Per feature, then per id and event-time column, the pieces its log column is made of, in
    row order; no Python work per row.

    Numbers come from the encoded matrix when there is one (a float32 slice, kept as an array);
    category strings as sent (unknown ones included), from the columns or the transposed records.
    Runs of record-only entries (the single-record requests, most of the traffic) are transposed
    in one go. An id or time a request did not send is null."""
    names = [*spec.feature_names, *spec.context_columns]
    chunks: dict[str, list[Sequence[Any] | np.ndarray]] = {name: [] for name in names}
    numeric = {name: spec.feature(name).type == "numeric" for name in spec.feature_names}
    rows: list[tuple[Any, ...]] = []

    def transpose_rows() -> None:
        # Decoded records are structs whose fields are the features in the description's order,
        # then the context columns (api.schemas).
        for values, pieces in zip(zip(*rows, strict=True), chunks.values(), strict=True):
            pieces.append(values)
        rows.clear()

    for entry in entries:
        if entry.matrix is None and entry.columns is None:
            rows.extend(map(msgspec.structs.astuple, entry.records))
            continue
        if rows:
            transpose_rows()
        for name, pieces in chunks.items():
            if numeric.get(name) and entry.matrix is not None:
                pieces.append(entry.matrix[:, entry.matrix_names.index(name)])
            elif entry.columns is not None:
                pieces.append(entry.columns[name] if name in entry.columns else [None] * entry.rows)
            else:  # a batch of records: only its category columns are read from them
                pieces.append(list(map(attrgetter(attribute(name)), entry.records)))
    if rows:
        transpose_rows()
    return chunks


def _numbers(pieces: list[Sequence[Any] | np.ndarray]) -> pa.Array:
    """One float64 column from arrays and sequences of numbers; None and NaN become nulls."""
    if not pieces:
        return pa.array([], pa.float64())
    values = np.concatenate([np.asarray(piece, dtype=np.float64) for piece in pieces])
    return pa.array(values, from_pandas=True)


def prediction_table(spec: DatasetSpec) -> Callable[[list[Entry]], pa.Table]:
    """Turns queued prediction entries into one Arrow table: ids, time, model, prediction and
    every feature as sent (categories as strings, unknown ones included, for drift monitoring;
    missing numbers as nulls). Entries decoded under another description than ``spec`` (a
    champion trained under an older one) keep their own features: a feature one of them lacks
    is null in its rows."""

    def to_table(entries: list[Entry]) -> pa.Table:
        # Runs of entries under one description (the service shares one object per description).
        runs = [list(run) for _, run in groupby(entries, key=lambda entry: id(entry.spec))]
        tables = [_entries_table(run, run[0].spec or spec) for run in runs]
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables, promote_options="default")

    return to_table


def _entries_table(entries: list[Entry], spec: DatasetSpec) -> pa.Table:
    """Entries decoded under ``spec`` as one Arrow table."""
    features = _feature_chunks(entries, spec)
    counts = [entry.rows for entry in entries]
    # Times are UTC; numpy's datetime64 wants them naive.
    times = np.array([e.at.replace(tzinfo=None) for e in entries], dtype="datetime64[us]")

    # Which entry each row came from, to repeat per-entry values (model name, version).
    entry_of_row = pa.array(np.repeat(np.arange(len(entries), dtype=np.int32), counts))

    def repeated(values: list[str]) -> pa.Array:
        return pa.array(values, pa.string()).take(entry_of_row)

    data: dict[str, Any] = {
        "prediction_id": pa.array(
            list(chain.from_iterable(e.prediction_ids for e in entries)), pa.string()
        ),
        "predicted_at": pa.array(np.repeat(times, counts)).cast(pa.timestamp("us", tz="UTC")),
        "model_name": repeated([e.model_name for e in entries]),
        "model_version": repeated([e.model_version for e in entries]),
        "prediction": pa.array(np.concatenate([e.predictions for e in entries]), pa.float64()),
    }
    for feature in spec.features:
        pieces = features[feature.name]
        if feature.type == "numeric":
            data[feature.name] = _numbers(pieces)
        else:
            values = list(chain.from_iterable(pieces))
            if feature.codes == "integer":  # sent as JSON integers or strings: logged as text
                values = [v if v is None or isinstance(v, str) else str(v) for v in values]
            data[feature.name] = pa.array(values, pa.string())
    for name in spec.context_columns:  # ids and times as sent, as text (strings or integers)
        sent = chain.from_iterable(features[name])
        data[name] = pa.array([v if v is None else str(v) for v in sent], pa.string())
    return pa.table(data)


def record_key(ids: Mapping[str, Any]) -> str:
    """One text key for a record's ids (``PID=526301100``; several joined by ``&``, by name), as
    feedback names a record and as the monitor finds its predictions."""
    return "&".join(f"{name}={ids[name]}" for name in sorted(ids))


def record_keys(frame: pd.DataFrame, names: Sequence[str]) -> pd.Series:
    """:func:`record_key` of each logged row by the id columns ``names`` (missing where one of
    them was not sent)."""
    parts = [f"{name}=" + frame[name].astype("string") for name in sorted(names)]
    keys = parts[0]
    for part in parts[1:]:
        keys = keys + "&" + part
    return keys.astype(object)


def feedback_table(entries: list[FeedbackEntry]) -> pa.Table:
    """Queued feedback as one Arrow table: each report names a prediction id or a record key."""
    return pa.table(
        {
            "prediction_id": pa.array([e.prediction_id for e in entries], pa.string()),
            "record_key": pa.array(
                [record_key(e.ids) if e.ids else None for e in entries], pa.string()
            ),
            "received_at": pa.array([e.at for e in entries], pa.timestamp("us", tz="UTC")),
            "actual": pa.array([e.actual for e in entries], pa.float64()),
            "client": pa.array([e.client for e in entries], pa.string()),
            "replaces": pa.array([e.replaces for e in entries], pa.float64()),
        }
    )


def _segments(
    store: ObjectStore, since: datetime | None, until: datetime | None = None
) -> list[str]:
    """The segments named from ``since`` to ``until`` (aware times; ``None``: no bound)."""
    # A segment is written after every row in it: one named before `since` holds nothing newer.
    # A key is its stamp then `-pid-seq`, so it sorts after the bare stamp of its own time.
    keys = store.list_keys(
        after=since.astimezone(UTC).strftime(_STAMP) if since else None,
        before=until.astimezone(UTC).strftime(_STAMP) if until else None,
    )
    return [key for key in keys if key.endswith(".parquet")]


def _read(
    store: ObjectStore, time_column: str, since: datetime | None, limit: int | None
) -> pd.DataFrame:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # every time in the log is UTC
    keys = _segments(store, since)
    if not keys:
        return pd.DataFrame()
    tables = [pq.read_table(io.BytesIO(data)).to_pandas() for data in store.get_many(keys)]
    frame = pd.concat(tables, ignore_index=True)
    if since is not None:
        frame = frame[frame[time_column] >= pd.Timestamp(since).tz_convert(UTC)]
    frame = frame.sort_values(time_column, kind="stable")
    if limit is not None:
        frame = frame.tail(limit)
    return frame.reset_index(drop=True)


def read_prediction_log(
    store: ObjectStore, since: datetime | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Logged predictions in ``store`` (the root store, ``Settings.object_store``) at or after
    ``since`` (naive means UTC), oldest first; with ``limit``, only the most recent ``limit`` of
    them. Columns: ``prediction_id``, ``predicted_at``, ``model_name``, ``model_version``,
    ``prediction`` and every feature. Empty when none."""
    return _read(store.child(PREDICTIONS), "predicted_at", since, limit)


def read_feedback_log(
    store: ObjectStore, since: datetime | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Reported actual values (``prediction_id`` or ``record_key``, ``received_at``,
    ``actual``, ``client``, ``replaces``: the value a correction replaces, else null), like
    :func:`read_prediction_log`; join the two on ``prediction_id``, or on the record's ids
    (:func:`record_key`), the latest report winning. Segments written before ids (or clients,
    or corrections) existed have no ``record_key`` (or ``client``, or ``replaces``): read with
    newer ones, those rows are null there."""
    return _read(store.child(FEEDBACK), "received_at", since, limit)


# Looking up a prediction id -------------------------------------------------------------------
CLOCK_SKEW = timedelta(minutes=1)
"""How far ahead of this clock a prediction id's time may be (another replica's clock) and still
be an id this API made; an id from further in the future is unknown."""
_STEP_BACK = timedelta(seconds=5)
# A segment is named by the clock of the process that made its ids, after it made them; searching
# from a few seconds earlier still finds it if that clock was stepped back (NTP) in between.


def lookup_lag(flush_seconds: float) -> timedelta:
    """How long after a prediction is made the segment holding it may be named: the segments of
    that window are all a lookup reads.

    A row is written by the flush that follows it, at most ``flush_seconds`` later, plus however
    long the previous write took (a slow disk, S3) and thread scheduling; three intervals leave
    room for two slow writes in a row, and at least a minute covers an object store slow to
    answer. Too short would refuse a real id as unknown; too long only lists a few more names."""
    return max(timedelta(seconds=60), timedelta(seconds=3 * flush_seconds))


class SegmentCache:
    """Some columns of immutable segments, each read once (only those columns: the footer and
    their pages) and kept while recently used, up to ``max_rows`` rows in all; the least
    recently used go first. Safe to use from several threads."""

    def __init__(self, store: ObjectStore, columns: Sequence[str], *, max_rows: int) -> None:
        self.store = store
        self.columns = list(columns)
        self.max_rows = max_rows
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def table(self, key: str) -> pa.Table:
        """The cached columns of segment ``key``, read from the store the first time."""
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        with self.store.reader(key) as handle:  # outside the lock: other segments stay readable
            table = pq.read_table(handle, columns=self.columns)
        with self._lock:
            if key not in self._tables:
                self._tables[key] = table
                self._rows += table.num_rows
            while self._rows > self.max_rows and len(self._tables) > 1:
                _, evicted = self._tables.popitem(last=False)
                self._rows -= evicted.num_rows
        return table


class LogLookup:
    """Whether a prediction id was issued, and what was last reported for it, from the two logs'
    writers of this process (what they have not written yet) and the segments every process
    sharing the store wrote. Segment columns are cached (:class:`SegmentCache`), so feedback
    for the predictions of one minute reads each segment once.

    A prediction is looked for in the segments of a few minutes at most (:func:`lookup_lag`);
    its earlier reports in every feedback segment written since it was made, so a report for a
    months-old prediction lists (and reads once, while cached) months of feedback segments.
    Two reports of one id that race (sent to two replicas within a flush interval, or to one in
    the same instant) may both answer ``accepted``: both are stored, and readers take the
    latest."""

    def __init__(
        self,
        predictions: SegmentWriter,
        feedback: SegmentWriter,
        *,
        lag: timedelta,
        cache_rows: int = 1_000_000,
    ) -> None:
        self.predictions = predictions
        self.feedback = feedback
        self.lag = lag
        """See :func:`lookup_lag`."""
        # About 50 bytes a prediction id in Arrow: a million rows is some 50 MB at most.
        self._ids = SegmentCache(predictions.store, ["prediction_id"], max_rows=cache_rows)
        self._reports = SegmentCache(
            feedback.store, ["prediction_id", "received_at", "actual"], max_rows=cache_rows
        )

    def predicted(self, prediction_id: str, *, made: datetime, now: datetime) -> bool:
        """True when the prediction ``prediction_id`` (made at ``made``, the id's own time) is
        in this process's unwritten log or in a prediction segment named from ``made`` to
        ``made + lag``; False for an id made later than ``now`` plus :data:`CLOCK_SKEW`."""
        if made > now + CLOCK_SKEW:
            return False
        start = made - _STEP_BACK
        # The unwritten entries first, then the listing (as in :meth:`reported`).
        for entry in self.predictions.pending():
            if entry.at >= start and prediction_id in entry.prediction_ids:
                return True
        for key in _segments(self.predictions.store, start, made + self.lag):
            column = self._ids.table(key)["prediction_id"]
            if pc.index(column, prediction_id).as_py() != -1:
                return True
        return False

    def reported(self, prediction_id: str, *, made: datetime) -> float | None:
        """The value of the latest report for ``prediction_id`` (made at ``made``), in this
        process's unwritten feedback or in the feedback segments written since ``made``
        (a report comes after its prediction); ``None`` when there was none. Reports named by
        a record's own ids are not looked at."""
        # The unwritten reports first, then the listing: a report written in between is seen in
        # one or both, never in neither.
        unwritten = self.feedback.pending()
        latest: tuple[datetime, float] | None = None
        for key in _segments(self.feedback.store, made - _STEP_BACK):
            table = self._reports.table(key)
            named = table.filter(pc.equal(table["prediction_id"], prediction_id))
            for at, actual in zip(
                named["received_at"].to_pylist(), named["actual"].to_pylist(), strict=True
            ):
                if latest is None or at >= latest[0]:
                    latest = (at, actual)
        for entry in unwritten:
            if entry.prediction_id == prediction_id and (latest is None or entry.at >= latest[0]):
                latest = (entry.at, entry.actual)
        return None if latest is None else latest[1]
