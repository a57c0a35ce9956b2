"""Row keys for splits: a 64-bit hash of a row's content as it was ingested.

Training splits rows by this hash (holdout, early-stopping slice, fit), so the same data splits the
same way on every run. The hash is taken over the row *as ingested*, under the description its table
was stored with, and travels with the row as the frame's index: when a later description drops or
adds a column, an older row keeps its side of the split. Otherwise a challenger's holdout would be
drawn again and hold rows the champion was fitted on, and the gate would compare the two unfairly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lakeloop.dataset import DatasetSpec

ROW_KEY = "lakeloop_row_key"
"""Name of the index that carries each row's key through a training frame."""


def keyed(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """``frame`` (a table as ingested under ``spec``) indexed by its rows' keys."""
    return frame.set_axis(pd.Index(content_hashes(frame, spec), name=ROW_KEY), axis="index")


def keys(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Each row's key: the one it was ingested with when the frame carries them, else the hash of
    its content under ``spec`` (index ignored)."""
    if frame.index.name == ROW_KEY:
        return np.asarray(frame.index.to_numpy(dtype=np.uint64))
    return content_hashes(frame, spec)


def content_hashes(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """A 64-bit hash of each row's record (ids, features and target; index ignored)."""
    return np.asarray(pd.util.hash_pandas_object(frame[spec.record_columns], index=False))
