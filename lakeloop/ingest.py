"""Local source files before they go to lakeFS: find them, read their shape, refuse the unreadable.

These checks are about the *file* (can it be parsed, does it have a header we can trust); the *data*
checks run in lakeFS's pre-merge hook, so they also guard merges that bypass this command. Not
every write: lakeFS reads pre-merge actions from the *source* branch, so whoever can write a
branch can delete the checks' action file on it and merge unchecked (and a direct commit to the
production branch runs no pre-merge hook at all). What guards such data is the training flow's
own data gate, which judges every commit again before it trains on it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SUFFIXES = (".csv", ".parquet")
# Delimiters people export by mistake; a header split by one of them means a misread file.
FOREIGN_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_CHUNK = 1 << 20


class SourceError(ValueError):
    """A source file cannot be ingested; the message names the file and the problem."""


@dataclass(frozen=True)
class SourceTable:
    """A local table checked for ingest."""

    path: Path
    rows: int
    columns: tuple[str, ...]
    size: int
    sha256: str
    md5: str = ""
    """Digests of the file's bytes: lakeFS's checksum of a stored object is one of them (SHA-256
    on the built-in server, MD5 on lakeFS's local and S3 block stores for a single-part upload)."""

    @property
    def name(self) -> str:
        return self.path.name


def find_sources(path: Path) -> list[Path]:
    """``path`` itself, or the CSV and Parquet files directly in a directory, sorted."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not found:
            raise SourceError(f"{path}: no .csv or .parquet files in this directory")
        return found
    if path.suffix.lower() not in SUFFIXES:
        raise SourceError(f"{path}: not a .csv or .parquet file")
    return [path]


def inspect_source(path: Path) -> SourceTable:
    """Read a file's header and count its rows without loading it whole; refuse what would be
    misread downstream (empty, duplicate or misdelimited columns, not UTF-8, corrupt Parquet)."""
    size = path.stat().st_size
    if size == 0:
        raise SourceError(f"{path}: the file is empty")
    if path.suffix.lower() == ".parquet":
        columns, rows = _parquet_shape(path)
    else:
        columns, rows = _csv_shape(path)
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise SourceError(f"{path}: duplicate column names: {', '.join(duplicates)}")
    if rows == 0:
        raise SourceError(f"{path}: the file has a header but no rows")
    sha256, md5 = file_digests(path)
    return SourceTable(
        path=path, rows=rows, columns=tuple(columns), size=size, sha256=sha256, md5=md5
    )


def _parquet_shape(path: Path) -> tuple[list[str], int]:
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise SourceError(f"{path}: not a readable Parquet file ({error})") from error
    return list(metadata.schema.names), metadata.num_rows


def _csv_shape(path: Path) -> tuple[list[str], int]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
            rows = sum(1 for _ in csv.reader(handle))
    except UnicodeDecodeError as error:
        raise SourceError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error
    except csv.Error as error:
        raise SourceError(f"{path}: not a readable CSV file ({error})") from error
    if not header:
        raise SourceError(f"{path}: the file has no header line")
    if len(header) == 1:
        for delimiter, name in FOREIGN_DELIMITERS.items():
            if delimiter in header[0]:
                raise SourceError(
                    f"{path}: the header is split by {name}s, not commas; "
                    "lakeloop reads comma-separated CSV (or use Parquet)"
                )
    return header, rows


def read_source(path: Path) -> pd.DataFrame:
    """Load a source file after :func:`inspect_source` accepted it (same parsing as downstream)."""
    inspect_source(path)
    try:
        return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else read_csv(path)
    except Exception as error:  # pandas and pyarrow raise many types for a bad file
        raise SourceError(f"{path}: cannot be read ({error})") from error


_LEADING_ZERO = r"^-?0[0-9]"


def read_csv(source: Path | bytes) -> pd.DataFrame:
    """A CSV table as lakeloop reads it everywhere (ingest, the data gate, training): pandas'
    types, except that a column of whole numbers written with leading zeros (ZIP codes such as
    ``02134``, class codes such as ``020``) stays text, since as numbers it would lose the zeros
    and no longer match its listed codes. Only such columns are read a second time, as text."""
    frame = pd.read_csv(_csv_input(source))
    whole = [name for name in frame.columns if _whole_numbers(frame[name])]
    if not whole:
        return frame
    text = pd.read_csv(_csv_input(source), usecols=whole, dtype=str)
    padded = [name for name in whole if text[name].str.match(_LEADING_ZERO).any()]
    return frame.assign(**{name: text[name] for name in padded}) if padded else frame


def _csv_input(source: Path | bytes) -> Path | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _whole_numbers(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    if not pd.api.types.is_float_dtype(values):
        return False
    present = values.dropna()
    return bool(len(present)) and bool((present == present.round()).all())


def file_sha256(path: Path) -> str:
    return file_digests(path)[0]


def file_digests(path: Path) -> tuple[str, str]:
    """SHA-256 and MD5 of a file's bytes, in one read."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write a frame as a Parquet file for ingest (the demo's batches, a retrain's feedback)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path
