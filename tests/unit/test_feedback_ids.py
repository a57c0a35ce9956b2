"""Feedback names a prediction the API made: its id must be in the prediction log (this
process's queue, or a segment any replica wrote to the shared store), and a second report for
it is a correction. The app holds a small real model; the store is a scratch folder."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.ids import made_at, prediction_ids
from api.predictor import ModelSlot
from lakeloop.dataset import DatasetSpec
from lakeloop.loop import feedback_headers
from lakeloop.settings import Settings, load_settings
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    Entry,
    FeedbackEntry,
    LogLookup,
    SegmentWriter,
    feedback_table,
    lookup_lag,
    prediction_table,
    read_feedback_log,
    read_prediction_log,
)
from monitoring.window import with_feedback
from tests.unit.conftest import with_api


@pytest.fixture
def client(settings: Settings, slot: ModelSlot) -> Iterator[TestClient]:
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as test_client:
        test_client.headers.update(feedback_headers(settings))
        yield test_client


def id_made_at(at: datetime) -> str:
    """A well-formed prediction id (UUIDv7) dated ``at`` that no API issued."""
    [fresh] = prediction_ids(1)
    head = f"{int(at.timestamp() * 1000):012x}"
    return f"{head[:8]}-{head[8:]}{fresh[13:]}"


def report(client: TestClient, prediction_id: str, actual: float = 250_000.0) -> Any:
    return client.post("/v1/feedback", json={"prediction_id": prediction_id, "actual": actual})


def feedback_counted(client: TestClient, outcome: str) -> float:
    """``lakeloop_api_feedback_total{outcome=...}`` as the API's /metrics shows it."""
    prefix = f'lakeloop_api_feedback_total{{outcome="{outcome}"}} '
    [line] = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


def test_an_id_still_in_the_queue_is_accepted_before_any_flush(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    unflushed = with_api(settings, log_flush_seconds=3600.0)
    with TestClient(create_app(unflushed, slot=slot, follow_registry=False)) as client:
        client.headers.update(feedback_headers(settings))
        prediction_id = client.post("/v1/predict", json=record).json()["prediction_id"]
        assert settings.object_store.child(PREDICTIONS).list_keys() == []  # nothing written yet
        answer = report(client, prediction_id)
        assert answer.status_code == 202, answer.text
        assert answer.json() == {
            "status": "accepted",
            "prediction_id": prediction_id,
            "client": "local",
        }
        assert feedback_counted(client, "accepted") == 1.0


def test_an_id_another_replica_predicted_is_found_in_its_segment(
    client: TestClient, settings: Settings, spec: DatasetSpec, market_batch: pd.DataFrame
) -> None:
    """Another API process sharing the store wrote the prediction (as its writer does); this
    one never saw it."""
    other = SegmentWriter(
        settings.object_store.child(PREDICTIONS),
        prediction_table(spec),
        max_rows=100,
        flush_rows=100,
        flush_seconds=60,
    )
    ids = prediction_ids(2)
    sales = market_batch.head(2)
    other.put(
        Entry(
            at=datetime.now(UTC),
            model_name="housing-price",
            model_version="3",
            prediction_ids=ids,
            predictions=np.full(2, 200_000.0),
            columns={name: sales[name].tolist() for name in spec.feature_names},
        )
    )
    assert other.flush() is not None
    answer = report(client, ids[1])
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "accepted"


def test_a_well_formed_id_never_issued_is_404_naming_it(client: TestClient) -> None:
    never = id_made_at(datetime.now(UTC) - timedelta(minutes=10))  # older than the lag
    answer = report(client, never)
    assert answer.status_code == 404
    assert answer.json()["detail"] == (
        f"unknown prediction id {never}: no prediction with this id is in the prediction log"
    )
    assert "retry-after" not in answer.headers
    assert feedback_counted(client, "unknown") == 1.0
    assert feedback_counted(client, "accepted") == 0.0


def test_a_just_made_unknown_id_is_404_with_retry_after(client: TestClient) -> None:
    """Another replica may not have flushed it yet: the answer says when to try again."""
    fresh = id_made_at(datetime.now(UTC) - timedelta(seconds=2))
    answer = report(client, fresh)
    assert answer.status_code == 404
    assert fresh in answer.json()["detail"]
    assert "may not have written it yet: retry after" in answer.json()["detail"]
    assert 55 <= int(answer.headers["retry-after"]) <= 60  # the lag is a minute by default


def test_an_id_from_the_future_is_unknown(client: TestClient) -> None:
    later = id_made_at(datetime.now(UTC) + timedelta(hours=1))
    answer = report(client, later)
    assert answer.status_code == 404
    assert "in the future" in answer.json()["detail"]
    assert "retry-after" not in answer.headers
    # The largest time 48 bits hold (year 10889) is no server error either.
    assert report(client, "ffffffff-ffff-7fff-bfff-ffffffffffff").status_code == 404


@pytest.mark.parametrize(
    "malformed",
    [
        "x",
        str(uuid.uuid4()),
        "0190b8e4-1c2d-7abc-8def-0123456789AB",  # upper case: never issued so
        "0190b8e4-1c2d",
        "0190b8e4-1c2d-7abc-8def-0123456789ab\n",  # passes the schema's pattern, not the id check
    ],
)
def test_a_prediction_id_that_is_not_a_uuid7_is_422_naming_the_field(
    client: TestClient, malformed: str
) -> None:
    answer = report(client, malformed)
    assert answer.status_code == 422
    [problem] = answer.json()["errors"]
    assert problem["field"] == "prediction_id"


def test_a_uuid7_with_a_trailing_newline_is_422_too() -> None:
    [issued] = prediction_ids(1)
    assert made_at(issued) <= datetime.now(UTC)
    with pytest.raises(ValueError, match="not a UUIDv7"):
        made_at(issued + "\n")


def test_unmatched_setting_stores_an_unknown_id_and_counts_it(
    settings: Settings, slot: ModelSlot
) -> None:
    keeping = with_api(settings, unknown_predictions="unmatched")
    never = id_made_at(datetime.now(UTC) - timedelta(minutes=10))
    with TestClient(create_app(keeping, slot=slot, follow_registry=False)) as client:
        client.headers.update(feedback_headers(settings))
        answer = report(client, never, 123_000.0)
        assert answer.status_code == 202
        assert answer.json()["status"] == "unmatched"
        assert feedback_counted(client, "unmatched") == 1.0
        assert feedback_counted(client, "unknown") == 0.0
    stored = read_feedback_log(settings.object_store)
    assert stored["prediction_id"].tolist() == [never]
    assert stored["actual"].tolist() == [123_000.0]


def test_a_second_report_is_a_correction_and_readers_take_the_latest(
    client: TestClient, settings: Settings, spec: DatasetSpec, record: dict[str, Any]
) -> None:
    """The second report is found in the queue, the third in the segment the first two went
    to; every row is kept, each correction saying what it replaces; the monitor's window uses
    the latest."""
    prediction_id = client.post("/v1/predict", json=record).json()["prediction_id"]
    first = report(client, prediction_id, 200_000.0)
    second = report(client, prediction_id, 210_000.0)
    service = client.app.state.service
    service.log.flush()  # (or the writer's thread did already)
    service.feedback_log.flush()
    assert service.feedback_log.pending() == []
    third = report(client, prediction_id, 220_000.0)
    assert [answer.status_code for answer in (first, second, third)] == [202] * 3
    assert first.json()["status"] == "accepted"
    assert "replaces" not in first.json()
    assert second.json() == {
        "status": "correction",
        "prediction_id": prediction_id,
        "client": "local",
        "replaces": 200_000.0,
    }
    assert (third.json()["status"], third.json()["replaces"]) == ("correction", 210_000.0)
    assert feedback_counted(client, "correction") == 2.0
    assert feedback_counted(client, "accepted") == 1.0
    service.feedback_log.flush()

    stored = read_feedback_log(settings.object_store)
    assert stored["actual"].tolist() == [200_000.0, 210_000.0, 220_000.0]
    assert stored["replaces"].tolist()[1:] == [200_000.0, 210_000.0]
    assert pd.isna(stored["replaces"].iloc[0])
    joined = with_feedback(read_prediction_log(settings.object_store), stored, spec=spec)
    assert joined[spec.target.name].tolist() == [220_000.0]


class CountingStore(ObjectStore):
    """A local store that counts the segments read from it."""

    reads: list[str]

    def reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        self.reads.append(key)
        return super().reader(key)


def counting(folder: Path) -> CountingStore:
    plain = ObjectStore.folder(folder)
    store = CountingStore(plain.fs, plain.root, url=plain.url)
    store.reads = []
    return store


def test_each_segment_is_read_once_then_served_from_the_cache(tmp_path: Path) -> None:
    """Feedback for the predictions of one minute reads each segment once; a segment outside
    the id's window (named before the id was made) is never read."""
    predictions, reports = counting(tmp_path / PREDICTIONS), counting(tmp_path / FEEDBACK)

    def writer(store: ObjectStore, to_table: Any) -> SegmentWriter:
        return SegmentWriter(store, to_table, max_rows=100, flush_rows=100, flush_seconds=60)

    log, feedback = writer(predictions, _ids_table), writer(reports, feedback_table)
    batches = [prediction_ids(3) for _ in range(3)]
    for ids in batches:
        log.put(_ids_entry(ids))
        assert log.flush() is not None
    lookup = LogLookup(log, feedback, lag=lookup_lag(5.0))
    now = datetime.now(UTC)
    later = batches[2]
    made = made_at(later[0])
    assert all(lookup.predicted(pid, made=made, now=now) for pid in later)
    first_reads = list(predictions.reads)
    assert len(first_reads) == len(set(first_reads)) <= 3  # one read per segment at most
    assert lookup.predicted(batches[0][0], made=made_at(batches[0][0]), now=now)
    for _ in range(5):
        assert all(
            lookup.predicted(pid, made=made_at(pid), now=now) for ids in batches for pid in ids
        )
    assert sorted(predictions.reads) == sorted(set(predictions.reads))  # never read twice
    never = id_made_at(now - timedelta(hours=1))
    assert not lookup.predicted(never, made=made_at(never), now=now)

    feedback.put(FeedbackEntry(at=datetime.now(UTC), prediction_id=later[0], actual=1.0))
    assert feedback.flush() is not None
    assert [lookup.reported(later[0], made=made) for _ in range(3)] == [1.0] * 3
    assert len(reports.reads) == 1
    assert lookup.reported(later[1], made=made) is None


def test_an_entry_being_written_is_still_pending_until_its_segment_is_stored(
    tmp_path: Path,
) -> None:
    """No gap between the queue and the store: a lookup during a slow write finds the entry."""
    seen_while_writing: list[list[Any]] = []

    class Watched(ObjectStore):
        def put(self, key: str, data: bytes) -> str:
            seen_while_writing.append(writer.pending())
            return super().put(key, data)

    plain = ObjectStore.folder(tmp_path)
    writer = SegmentWriter(
        Watched(plain.fs, plain.root, url=plain.url),
        _ids_table,
        max_rows=10,
        flush_rows=10,
        flush_seconds=60,
    )
    entry = _ids_entry(prediction_ids(2))
    writer.put(entry)
    assert writer.flush() is not None
    assert seen_while_writing == [[entry]]
    assert writer.pending() == []


def test_the_cache_keeps_only_so_many_rows(tmp_path: Path) -> None:
    predictions = counting(tmp_path / PREDICTIONS)
    log = SegmentWriter(predictions, _ids_table, max_rows=10, flush_rows=10, flush_seconds=60)
    reports = SegmentWriter(
        counting(tmp_path / FEEDBACK), feedback_table, max_rows=1, flush_rows=1, flush_seconds=60
    )
    batches = [prediction_ids(2) for _ in range(3)]
    for ids in batches:
        log.put(_ids_entry(ids))
        log.flush()
    lookup = LogLookup(log, reports, lag=lookup_lag(5.0), cache_rows=4)  # two segments' rows
    now = datetime.now(UTC)
    for _ in range(2):
        for ids in batches:
            assert lookup.predicted(ids[0], made=made_at(ids[0]), now=now)
    assert len(predictions.reads) > len(set(predictions.reads))  # the oldest was evicted


def test_old_feedback_segments_without_replaces_are_read_with_new_ones(tmp_path: Path) -> None:
    store = ObjectStore.folder(tmp_path)
    old = feedback_table([FeedbackEntry(at=datetime.now(UTC), prediction_id="a", actual=1.0)])
    writer = SegmentWriter(
        store.child(FEEDBACK),
        lambda _: old.drop_columns(["replaces"]),  # a segment from before corrections
        max_rows=10,
        flush_rows=10,
        flush_seconds=60,
    )
    writer.put(FeedbackEntry(at=datetime.now(UTC), prediction_id="a", actual=1.0))
    writer.flush()
    assert "replaces" not in read_feedback_log(store)
    writer.to_table = feedback_table
    writer.put(FeedbackEntry(at=datetime.now(UTC), prediction_id="a", actual=2.0, replaces=1.0))
    writer.flush()
    stored = read_feedback_log(store)
    assert stored["actual"].tolist() == [1.0, 2.0]
    assert pd.isna(stored["replaces"].iloc[0])
    assert stored["replaces"].iloc[1] == 1.0


def test_the_lookup_lag_is_a_minute_or_three_flush_intervals() -> None:
    assert lookup_lag(5.0) == timedelta(seconds=60)
    assert lookup_lag(30.0) == timedelta(seconds=90)


def _ids_entry(ids: list[str]) -> Entry:
    return Entry(
        at=datetime.now(UTC),
        model_name="m",
        model_version="1",
        prediction_ids=ids,
        predictions=np.zeros(len(ids)),
    )


def _ids_table(entries: list[Entry]) -> pa.Table:
    """Prediction segments with only what a lookup reads."""
    return pa.table({"prediction_id": [pid for entry in entries for pid in entry.prediction_ids]})


def test_what_unknown_ids_get_is_one_setting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.api.unknown_predictions == "refuse"
    monkeypatch.setenv("LAKELOOP_API__UNKNOWN_PREDICTIONS", "unmatched")
    assert load_settings(state_dir=settings.state_dir).api.unknown_predictions == "unmatched"
    monkeypatch.setenv("LAKELOOP_API__UNKNOWN_PREDICTIONS", "ignore")
    with pytest.raises(ValueError, match="unknown_predictions"):
        load_settings(state_dir=settings.state_dir)


def test_without_a_prediction_log_ids_are_checked_for_form_only(
    settings: Settings, slot: ModelSlot
) -> None:
    """Logging off: nothing to look an id up in (and nowhere to store the report)."""
    unlogged = with_api(settings, log_predictions=False)
    with TestClient(create_app(unlogged, slot=slot, follow_registry=False)) as client:
        client.headers.update(feedback_headers(settings))
        never = id_made_at(datetime.now(UTC) - timedelta(minutes=10))
        assert report(client, never).json()["status"] == "accepted"
        assert report(client, "x").status_code == 422
    assert read_feedback_log(settings.object_store).empty
