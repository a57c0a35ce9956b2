"""Source files are refused before upload when they would be misread downstream."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeloop.ingest import SourceError, file_sha256, find_sources, inspect_source


def test_csv_and_parquet_shapes_are_read_without_loading(
    tmp_path: Path, market_batch: pd.DataFrame
) -> None:
    csv_path, parquet_path = tmp_path / "a.csv", tmp_path / "b.parquet"
    market_batch.head(50).to_csv(csv_path, index=False)
    market_batch.head(70).to_parquet(parquet_path, index=False)
    assert inspect_source(csv_path).rows == 50
    parquet = inspect_source(parquet_path)
    assert parquet.rows == 70
    assert parquet.columns == tuple(market_batch.columns)
    assert parquet.sha256 == file_sha256(parquet_path)
    assert find_sources(tmp_path) == [csv_path, parquet_path]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty"),
        (b"a,b,c\n", "has a header but no rows"),
        (b"a,b,a\n1,2,3\n", "duplicate column names: a"),
        (b"a;b;c\n1;2;3\n", "split by semicolons"),
        (b"a\tb\tc\n1\t2\t3\n", "split by tabs"),
        ("a,b\nGen\u00e8ve,1\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_csv_is_refused_naming_the_problem(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "batch.csv"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=problem) as raised:
        inspect_source(path)
    assert "batch.csv" in str(raised.value)


def test_corrupt_parquet_is_refused(tmp_path: Path, market_batch: pd.DataFrame) -> None:
    path = tmp_path / "batch.parquet"
    market_batch.head(10).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-40])  # truncated: the footer is gone
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        inspect_source(path)


def test_parquet_with_duplicate_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    table = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["x", "x"])
    pq.write_table(table, path)
    with pytest.raises(SourceError, match="duplicate column names: x"):
        inspect_source(path)


def test_missing_paths_and_foreign_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        find_sources(tmp_path / "nope.csv")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"not a \.csv or \.parquet"):
        find_sources(tmp_path / "notes.txt")
    with pytest.raises(SourceError, match=r"no \.csv or \.parquet files"):
        find_sources(tmp_path)
