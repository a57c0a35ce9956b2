"""What every object store backend (a local folder, S3) must answer alike: listing a range of
names, and reading a few columns of a Parquet object without fetching the rest."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from lakeloop.stores.objects import ObjectStore


def check_ranges_and_columns(store: ObjectStore) -> None:
    """``store`` (empty) lists the keys strictly between two names, in name order, with or
    without a prefix, and reads one column of a Parquet object through :meth:`reader`."""
    keys = [
        "other.txt",
        "segs/20260101T000000000000Z-7-000001.parquet",
        "segs/20260101T000001000000Z-7-000002.parquet",
        "segs/20260101T000002000000Z-7-000003.parquet",
        "segs/20260101T000003000000Z-7-000004.parquet",
    ]
    for key in reversed(keys):
        store.put(key, key.encode())
    assert store.list_keys(after="segs/20260101T000001000000Z") == keys[2:]
    assert store.list_keys(before="segs/20260101T000001000000Z") == keys[:2]
    assert (
        store.list_keys(
            "segs", after="segs/20260101T000000000000Z", before="segs/20260101T000003000000Z"
        )
        == keys[1:4]
    )
    assert store.list_keys("segs", after=keys[1], before=keys[3]) == [keys[2]]  # both exclusive
    assert store.list_keys("none", after="a") == []
    assert store.child("gone").list_keys(after="a", before="z") == []

    buffer = io.BytesIO()
    pq.write_table(pa.table({"prediction_id": ["a", "b"], "wide": ["x" * 1000] * 2}), buffer)
    store.put("table.parquet", buffer.getvalue())
    with store.reader("table.parquet") as handle:
        read = pq.read_table(handle, columns=["prediction_id"])
    assert read.column_names == ["prediction_id"]
    assert read["prediction_id"].to_pylist() == ["a", "b"]
