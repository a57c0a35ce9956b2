"""The data gate: one verdict for one state of the production branch.

The pre-merge hook and the training flow used to judge different data (the hook the incoming
tables, the flow the whole history), so a rule spanning tables, such as "no duplicate records",
passed the first and failed the second, after the point of no return. Both now ask this module
the same question about the same state:

- every stored table passes the batch checks on its own (Great Expectations, the description's
  suite), and
- the history rules hold across all of them (:mod:`validation.history`).

The pre-merge hook asks it of the state the merge would produce (the branch's tables with the
merge's changes applied), the training flow of the commit it trains. A table's check and its row
fingerprints are kept by the table's lakeFS checksum (its content identity) under the state folder,
so judging a new state checks only the tables it has not seen, and never re-reads the others.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lakefs
import numpy as np
import pandas as pd

from lakeloop import lakefs_client
from lakeloop.dataset import DatasetSpec
from lakeloop.ingest import SourceTable
from lakeloop.settings import Settings
from validation.checks import Validator, warm_validator
from validation.history import (
    RECORD,
    all_fingerprints,
    history_findings,
    record_fingerprints,
)
from validation.results import Finding, ValidationResult, combine

Load = Callable[[], pd.DataFrame]
"""Reads a stored table; raises :class:`lakefs_client.UnreadableTableError` when it cannot."""
UNREADABLE = "expect_table_to_be_readable"
"""Pseudo-expectation of a stored table that cannot be parsed."""


@dataclass(frozen=True)
class TableCheck:
    """One stored table judged on its own, with the fingerprints the history rules compare."""

    result: ValidationResult
    fingerprints: dict[str, np.ndarray]


def spec_digest(spec: DatasetSpec) -> str:
    """A short digest of the description: checks made under another description are not reused."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


class TableChecks:
    """Table checks by lakeFS checksum: in memory, and on disk under ``folder`` when given (the
    gateway and every training run share it on one machine)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[str, TableCheck] = {}
        self._lock = threading.Lock()

    def get(self, checksum: str) -> TableCheck | None:
        with self._lock:
            found = self._memory.get(checksum)
        if found is not None or self.folder is None:
            return found
        result_file, keys_file = self._files(checksum)
        try:
            result = ValidationResult.from_json(json.loads(result_file.read_text()))
            with np.load(keys_file) as stored:
                keys = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, KeyError):
            return None  # not kept yet, or a half-written entry: check the table again
        found = TableCheck(result=result, fingerprints=keys)
        with self._lock:
            self._memory[checksum] = found
        return found

    def put(self, checksum: str, check: TableCheck) -> None:
        with self._lock:
            self._memory[checksum] = check
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        result_file, keys_file = self._files(checksum)
        # Written aside and renamed: a reader never sees half a file.
        keys_temp = keys_file.with_suffix(".tmp.npz")
        np.savez(keys_temp, **check.fingerprints)  # type: ignore[arg-type]
        keys_temp.replace(keys_file)
        result_temp = result_file.with_suffix(".tmp")
        result_temp.write_text(json.dumps(check.result.to_json(), default=str))
        result_temp.replace(result_file)

    def _files(self, checksum: str) -> tuple[Path, Path]:
        assert self.folder is not None
        safe = hashlib.sha256(checksum.encode()).hexdigest()[:32]
        return self.folder / f"{safe}.json", self.folder / f"{safe}.npz"


@dataclass(frozen=True)
class StateVerdict:
    """The gate's answer for one state of the data."""

    result: ValidationResult
    """Every table's findings (each naming its table) and the history rules' findings."""
    checked: list[str]
    """Tables checked now (the others' checks were kept from before)."""
    changed: list[str]
    """Tables a merge adds or changes (empty when judging a commit)."""

    @property
    def passed(self) -> bool:
        return self.result.success


class DataGate:
    """Judges states of the data for one description."""

    def __init__(
        self,
        spec: DatasetSpec,
        validator: Callable[[], Validator],
        *,
        prefix: str,
        state_dir: Path | None,
    ) -> None:
        self.spec = spec
        self.prefix = prefix
        self._validator = validator
        folder = state_dir / "validation" / "tables" / spec_digest(spec) if state_dir else None
        self.checks = TableChecks(folder)

    def check_table(self, frame: pd.DataFrame) -> TableCheck:
        """Judge one table on its own and take its fingerprints."""
        return TableCheck(
            result=self._validator().validate(frame),
            fingerprints=all_fingerprints(frame, self.spec),
        )

    def stored_check(self, checksum: str, load: Load) -> tuple[TableCheck, bool]:
        """The check of a stored table: kept from before, or made now from ``load()`` (the frame)
        and kept; True when made now. A table ``load`` cannot parse fails with the reason."""
        kept = self.checks.get(checksum)
        if kept is not None:
            return kept, False
        try:
            check = self.check_table(load())
        except lakefs_client.UnreadableTableError as error:
            check = unreadable(str(error))
        self.checks.put(checksum, check)
        return check, True

    def judge(self, checks: Mapping[str, TableCheck]) -> ValidationResult:
        """The verdict on a state made of ``checks`` (path → check, in ingest order)."""
        history = history_findings(
            {path: check.fingerprints for path, check in checks.items()}, self.spec
        )
        return combine({path: check.result for path, check in checks.items()}, history=history)

    def judge_tables(
        self, tables: Mapping[str, tuple[str, Load]], *, changed: list[str] | None = None
    ) -> StateVerdict:
        """The verdict on a state given as path → (lakeFS checksum, how to read the table)."""
        checks, checked = {}, []
        for path, (checksum, load) in sorted(tables.items()):
            checks[path], fresh = self.stored_check(checksum, load)
            if fresh:
                checked.append(path)
        return StateVerdict(result=self.judge(checks), checked=checked, changed=changed or [])

    def judge_stored(self, tables: Mapping[str, lakefs_client.StoredTable]) -> StateVerdict:
        """The verdict on tables already read (the training flow reads them to train anyway)."""
        return self.judge_tables(
            {path: (table.checksum, table.load) for path, table in tables.items()}
        )

    def judge_merge(
        self, client: lakefs.Client, *, repository: str, base: str, head: str
    ) -> StateVerdict:
        """The verdict on the state merging ``head`` into ``base`` would produce: ``base``'s
        tables with what ``head`` adds, changes and removes since their merge base. Tables whose
        checks are kept are not read."""
        repo = lakefs.Repository(repository, client=client)
        tables = {
            path: (checksum, _loader(repo.ref(base), path))
            for path, checksum in self._tables(repo, base).items()
        }
        changes = lakefs_client.table_changes(repo, base=base, head=head, prefix=self.prefix)
        changed = sorted(path for path, kind in changes.items() if kind != "removed")
        at_head = self._tables(repo, head) if changed else {}
        for path, kind in changes.items():
            if kind == "removed":
                tables.pop(path, None)
            elif path in at_head:
                tables[path] = (at_head[path], _loader(repo.ref(head), path))
        return self.judge_tables(tables, changed=changed)

    def _tables(self, repo: lakefs.Repository, ref: str) -> dict[str, str]:
        return lakefs_client.stored_tables(repo.ref(ref), prefix=self.prefix)


def _loader(reference: lakefs.Reference, path: str) -> Load:
    return lambda: lakefs_client.read_object_table(reference, path)


@dataclass(frozen=True)
class Overlap:
    """How much of a local table ``main`` already holds (idempotent ingest)."""

    rows: int
    """Rows of the local table that have a fingerprint (all but wholly empty ones)."""
    present: np.ndarray
    """Per row: the same record is already on the production branch."""
    same_as: str | None = None
    """The stored table with the very same bytes, if any."""
    commit_id: str | None = None
    """The commit that added ``same_as``."""

    @property
    def present_rows(self) -> int:
        return int(self.present.sum())

    @property
    def already_there(self) -> bool:
        """Nothing new: the same file, or every row of it, is already stored."""
        return self.same_as is not None or (self.rows > 0 and self.present_rows == self.rows)


def overlap(
    gate: DataGate,
    client: lakefs.Client,
    *,
    repository: str,
    ref: str,
    source: SourceTable,
    frame: pd.DataFrame,
) -> Overlap:
    """What of ``source`` (read as ``frame``) the tables at ``ref`` already hold: the same bytes
    under any name, or the same records. Uses the kept table checks' fingerprints; a table not
    seen before is checked now (and kept)."""
    repo = lakefs.Repository(repository, client=client)
    reference = repo.ref(ref)
    stored = lakefs_client.stored_tables(reference, prefix=gate.prefix)
    digests = {source.sha256, source.md5} - {""}
    same = next((path for path, checksum in stored.items() if checksum in digests), None)
    if same is not None:
        return Overlap(
            rows=len(frame),
            present=np.ones(len(frame), dtype=bool),
            same_as=same,
            commit_id=lakefs_client.commit_adding(reference, same),
        )
    known = [
        gate.stored_check(checksum, _loader(reference, path))[0].fingerprints.get(RECORD)
        for path, checksum in stored.items()
    ]
    held = np.concatenate([keys for keys in known if keys is not None] or [_EMPTY])
    records, kept = record_fingerprints(frame, gate.spec)
    return Overlap(rows=int(kept.sum()), present=np.isin(records, held) & kept)


_EMPTY = np.empty(0, dtype=np.uint64)


@lru_cache(maxsize=4)
def _gate(spec: DatasetSpec, prefix: str, state_dir: Path) -> DataGate:
    return DataGate(spec, lambda: warm_validator(spec), prefix=prefix, state_dir=state_dir)


def for_settings(settings: Settings, spec: DatasetSpec) -> DataGate:
    """The data gate of this process for these settings, keeping table checks under the state
    folder (a warm Great Expectations validator, built on first use)."""
    return _gate(spec, settings.lakefs.data_prefix, settings.state_dir)


def unreadable(error: str) -> TableCheck:
    """The check of a table that cannot be parsed: one failure saying why."""
    finding = Finding(
        expectation=UNREADABLE,
        column=None,
        severity="failure",
        observed=error,
        allowed="a CSV or Parquet table",
        unexpected_count=None,
    )
    return TableCheck(
        result=ValidationResult(success=False, rows=0, findings=[finding], raw={}),
        fingerprints={},
    )
