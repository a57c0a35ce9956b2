"""The data gate: one verdict for one state of the production branch.

The pre-merge hook and the training flow used to judge different data (the hook the incoming
tables, the flow the whole history), so a rule spanning tables, such as "no duplicate records",
passed the first and failed the second, after the point of no return. Both now ask this module
the same question about the same state:

- every stored table passes the batch checks on its own (Great Expectations, the suite of the
  description it was ingested with, stored beside it: :mod:`lakeloop.evolution`), and
- the history rules of the current description hold across all the tables that can train under
  it (:mod:`lakeloop.validation.history`).

The pre-merge hook asks it of the state the merge would produce (the branch's tables with the
merge's changes applied), the training flow of the commit it trains. A table's check and its row
fingerprints are kept by the table's lakeFS checksum (its content identity) and its description,
under the state folder, so judging a new state checks only the tables it has not seen, and never
re-reads the others.

The verdict on a whole state is kept too, by the state's content digest (every table's path,
checksum and ingested description, and the current description), in the store the settings name
(:data:`VERDICTS`: the state folder, or ``s3://`` where the gateway and the flows run apart). A
merge makes on the production branch exactly the state its pre-merge hook judged, so the training
flow finds the hook's verdict there and does not judge that state again. Data that reached the
branch around the hook (a commit made directly on it) is a state nobody judged: the flow judges
it in full, and refuses it when it fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import lakefs
import numpy as np
import pandas as pd

from lakeloop import evolution, lakefs_client, rowkeys
from lakeloop.dataset import DatasetSpec, described, parse_spec
from lakeloop.ingest import SourceTable
from lakeloop.settings import Settings
from lakeloop.stores.objects import ObjectStore
from lakeloop.validation.checks import Validator, warm_validator
from lakeloop.validation.history import (
    RECORD,
    all_fingerprints,
    history_findings,
    record_fingerprints,
)
from lakeloop.validation.results import Finding, ValidationResult, combine

logger = logging.getLogger(__name__)

Load = Callable[[], pd.DataFrame]
"""Reads a stored table; raises :class:`lakefs_client.UnreadableTableError` when it cannot."""
UNREADABLE = "expect_table_to_be_readable"
"""Pseudo-expectation of a stored table that cannot be parsed."""
LEFT_OUT = "expect_table_to_train_under_the_description"
"""Pseudo-expectation (a warning) of a table ingested under a description whose data cannot train
under the current one (a required feature added, a type changed)."""
FEEDBACK_PREFIX = "feedback-"
"""How the file name of a table of folded feedback starts (the prices clients reported for a
drifted window's predictions, which a drift retrain publishes: ``pipelines.retrain``). Its rows
are data production reported, not data that predates it: a model trained on them is also judged
on rows that do not come from such tables (:func:`lakeloop.model.split_rows`)."""
VERDICTS = "validation/states"
"""Where, in the settings' store, the verdicts on whole states are kept by state digest."""
VERDICT_FORMAT = 1
"""Part of every state digest: a change to what a verdict holds or how it is reached bumps it, so
verdicts kept by an older lakeloop are not reused."""


def is_feedback_table(path: str) -> bool:
    """Whether the table at ``path`` is one of folded feedback (its file name says so)."""
    return path.rsplit("/", 1)[-1].startswith(FEEDBACK_PREFIX)


@dataclass(frozen=True)
class TableCheck:
    """One stored table judged on its own, with the fingerprints the history rules compare."""

    result: ValidationResult
    fingerprints: dict[str, np.ndarray]


class TableChecks:
    """Table checks by lakeFS checksum: in memory, and on disk under ``folder`` when given (the
    gateway and every training run share it on one machine)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[str, TableCheck] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> TableCheck | None:
        with self._lock:
            found = self._memory.get(key)
        if found is not None or self.folder is None:
            return found
        result_file, keys_file = self._files(key)
        try:
            result = ValidationResult.from_json(json.loads(result_file.read_text()))
            with np.load(keys_file) as stored:
                keys = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, KeyError):
            return None  # not kept yet, or a half-written entry: check the table again
        found = TableCheck(result=result, fingerprints=keys)
        with self._lock:
            self._memory[key] = found
        return found

    def put(self, key: str, check: TableCheck) -> None:
        with self._lock:
            self._memory[key] = check
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        result_file, keys_file = self._files(key)
        # Written aside and renamed: a reader never sees half a file.
        keys_temp = keys_file.with_suffix(".tmp.npz")
        np.savez(keys_temp, **check.fingerprints)  # type: ignore[arg-type]
        keys_temp.replace(keys_file)
        result_temp = result_file.with_suffix(".tmp")
        result_temp.write_text(json.dumps(check.result.to_json(), default=str))
        result_temp.replace(result_file)

    def _files(self, key: str) -> tuple[Path, Path]:
        assert self.folder is not None
        safe = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.folder / f"{safe}.json", self.folder / f"{safe}.npz"


class StateVerdicts:
    """Verdicts on whole states of the data by state digest, in an object store (one small JSON
    object each, written whole), shared by the pre-merge hook and every training run."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def get(self, digest: str) -> ValidationResult | None:
        try:
            stored = json.loads(self.store.get(f"{digest}.json"))
            return ValidationResult.from_json(stored)
        except (OSError, ValueError, KeyError):
            return None  # never judged (or unreadable): the state is judged again

    def put(self, digest: str, result: ValidationResult) -> None:
        try:
            self.store.put(f"{digest}.json", json.dumps(result.to_json(), default=str).encode())
        except OSError as error:  # only saves work later: the verdict itself stands
            logger.warning("could not keep the verdict on state %.12s: %s", digest, error)


@dataclass(frozen=True)
class TrainingData:
    """The tables of a state as one training frame under the current description."""

    frame: pd.DataFrame
    feedback: np.ndarray
    """Per row of ``frame``: True when it comes from a table of folded feedback
    (:func:`is_feedback_table`); the training split keeps a holdout of the others."""
    left_out: dict[str, str]
    """Tables that cannot train under the current description, with the reason."""


@dataclass(frozen=True)
class StateVerdict:
    """The gate's answer for one state of the data."""

    result: ValidationResult
    """Every table's findings (each naming its table) and the history rules' findings."""
    checked: list[str]
    """Tables checked now (the others' checks were kept from before)."""
    changed: list[str]
    """Tables a merge adds or changes (empty when judging a commit)."""
    digest: str = ""
    """The state's content digest (:meth:`DataGate.state_digest`), by which its verdict is kept."""
    reused: bool = False
    """The verdict was kept from an earlier judgement of the same state (the pre-merge hook's on
    the merge that made it, or an earlier training's): no table was read or checked now."""

    @property
    def passed(self) -> bool:
        return self.result.success

    def how(self) -> str:
        """One line saying how the verdict was reached, for the run's log and its report."""
        if self.reused:
            return (
                f"verdict reused: this state of the data (digest {self.digest:.12}) was judged "
                "before, by the pre-merge checks of the merge that made it or an earlier run"
            )
        kept = len(self.result.tables) - len(self.checked)
        return (
            f"judged in full: {len(self.checked)} tables checked now, {max(kept, 0)} tables' "
            "checks kept by checksum, the history rules across all of them"
        )


@dataclass(frozen=True)
class Stored:
    """A stored table as the gate sees it: its content identity, how to read it, and the
    description it was ingested with."""

    checksum: str
    load: Load
    ingested: DatasetSpec


class DataGate:
    """Judges states of the data under the current description: each table by the description it
    was ingested with, the history rules across the tables that can train under the current one."""

    def __init__(
        self,
        spec: DatasetSpec,
        validator: Callable[[DatasetSpec], Validator],
        *,
        prefix: str,
        state_dir: Path | None,
        verdicts: ObjectStore | None = None,
    ) -> None:
        self.spec = spec
        self.prefix = prefix
        self._validator = validator
        folder = state_dir / "validation" / "tables" / spec.digest if state_dir else None
        self.checks = TableChecks(folder)
        self.verdicts = StateVerdicts(verdicts) if verdicts is not None else None
        """Verdicts on whole states, kept and reused when given (see the module's docstring)."""
        self._descriptions: dict[str, DatasetSpec] = {}

    def check_table(
        self, frame: pd.DataFrame, *, ingested: DatasetSpec | None = None
    ) -> TableCheck:
        """Judge one table on its own, by the description it was ingested with (the current one
        by default), and take its fingerprints as training data under the current one. A table
        that cannot train under the current description says so in a warning and has none."""
        ingested = ingested or self.spec
        frame = described(frame, ingested)  # codes stored as numbers or text fingerprint alike
        result = self._validator(ingested).validate(frame)
        change = evolution.compare(ingested, self.spec)
        if change.excludes_older_tables:
            left_out = Finding(
                expectation=LEFT_OUT,
                column=None,
                severity="warning",
                observed=(
                    f"ingested under {ingested.name} v{ingested.version}: "
                    f"{change.exclusion_reason()}"
                ),
                allowed=f"what {self.spec.name} v{self.spec.version} can train on",
                unexpected_count=None,
            )
            return TableCheck(
                result=replace(result, findings=[*result.findings, left_out]), fingerprints={}
            )
        adapted = evolution.adapt(frame, ingested=ingested, current=self.spec)
        return TableCheck(result=result, fingerprints=all_fingerprints(adapted, self.spec))

    def stored_check(self, table: Stored) -> tuple[TableCheck, bool]:
        """The check of a stored table: kept from before, or made now (and kept); True when made
        now. A table that cannot be parsed fails with the reason."""
        key = self.check_key(table)
        kept = self.checks.get(key)
        if kept is not None:
            return kept, False
        try:
            check = self.check_table(table.load(), ingested=table.ingested)
        except lakefs_client.UnreadableTableError as error:
            check = unreadable(str(error))
        self.checks.put(key, check)
        return check, True

    @staticmethod
    def check_key(table: Stored) -> str:
        """What a table's check is kept by: its content identity and its description."""
        return f"{table.checksum}|{table.ingested.digest}"

    def unchecked(self, tables: Mapping[str, Stored]) -> dict[str, Stored]:
        """The tables whose check is not kept yet (the ones judging them would read)."""
        return {
            path: table
            for path, table in tables.items()
            if self.checks.get(self.check_key(table)) is None
        }

    def ingested_under(self, reference: lakefs.Reference) -> Callable[[str], DatasetSpec]:
        """For a table path at ``reference``: the description its batch was ingested with (the
        ``_description.yaml`` beside it), else the current one (data committed around
        ``lakeloop ingest``, or before descriptions were stored)."""
        return self._described(reference)[1]

    def stored(self, reference: lakefs.Reference) -> dict[str, Stored]:
        """Every table at ``reference`` as the gate sees it, from one listing (path order)."""
        tables, ingested = self._described(reference)
        return {
            path: Stored(checksum, _loader(reference, path), ingested(path))
            for path, checksum in tables.items()
        }

    def _described(
        self, reference: lakefs.Reference
    ) -> tuple[dict[str, str], Callable[[str], DatasetSpec]]:
        tables, descriptions = lakefs_client.stored_data(
            reference, prefix=self.prefix, beside=evolution.DESCRIPTION_FILE
        )

        def description(path: str) -> DatasetSpec:
            folder = path.rsplit("/", 1)[0]
            checksum = descriptions.get(folder)
            if checksum is None:
                return self.spec
            if checksum not in self._descriptions:
                where = f"{folder}/{evolution.DESCRIPTION_FILE}"
                text = lakefs_client.read_bytes(reference, where)
                self._descriptions[checksum] = parse_spec(text, source=where)
            return self._descriptions[checksum]

        return tables, description

    def frame_at(self, reference: lakefs.Reference) -> TrainingData:
        """Every table at ``reference`` as the training flow uses it there (see
        :meth:`training_frame`), for judging a model on that commit's data again."""
        stored = self.stored(reference)
        return self.training_frame(stored, lambda path: stored[path].ingested)

    def training_frame(
        self,
        tables: Mapping[str, lakefs_client.StoredTable] | Mapping[str, Stored],
        ingested: Callable[[str], DatasetSpec],
    ) -> TrainingData:
        """The tables as one frame under the current description (see :mod:`lakeloop.evolution`),
        which of its rows come from feedback tables, and the tables left out with the reason
        (after the gate passed them: all are readable)."""
        frames, feedback = [], []
        left_out = self.left_out(list(tables), ingested)
        for path, table in tables.items():
            if path in left_out:
                continue
            rows = trainable_rows(table.load(), ingested=ingested(path), current=self.spec)
            frames.append(rows)
            feedback.append(np.full(len(rows), is_feedback_table(path)))
        frame = pd.concat(frames) if frames else pd.DataFrame()
        marks = np.concatenate(feedback) if feedback else np.zeros(0, dtype=bool)
        return TrainingData(frame=frame, feedback=marks, left_out=left_out)

    def left_out(self, paths: list[str], ingested: Callable[[str], DatasetSpec]) -> dict[str, str]:
        """The tables that cannot train under the current description (a required feature
        added, a type changed since they were ingested), with the reason; nothing is read."""
        changes = {path: evolution.compare(ingested(path), self.spec) for path in paths}
        return {
            path: change.exclusion_reason()
            for path, change in changes.items()
            if change.excludes_older_tables
        }

    def judge(self, checks: Mapping[str, TableCheck]) -> ValidationResult:
        """The verdict on a state made of ``checks`` (path → check, in ingest order)."""
        history = history_findings(
            {path: check.fingerprints for path, check in checks.items()}, self.spec
        )
        return combine({path: check.result for path, check in checks.items()}, history=history)

    def state_digest(self, tables: Mapping[str, Stored]) -> str:
        """The content identity of a state under the current description: every table's path,
        checksum and the description it was ingested with (nothing is read)."""
        identity = [
            VERDICT_FORMAT,
            self.spec.digest,
            sorted((path, table.checksum, table.ingested.digest) for path, table in tables.items()),
        ]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def judge_tables(
        self,
        tables: Mapping[str, Stored],
        *,
        changed: list[str] | None = None,
        check_elsewhere: CheckElsewhere | None = None,
    ) -> StateVerdict:
        """The verdict on a state given as path → stored table: the one kept for the same state
        when there is one, else judged now (and kept). ``check_elsewhere`` checks the tables
        whose check is not kept (on a Dask cluster's workers: :mod:`lakeloop.cluster`), so that
        this process reads none of them."""
        digest = self.state_digest(tables)
        kept = self.verdicts.get(digest) if self.verdicts is not None else None
        if kept is not None:
            return StateVerdict(
                result=kept, checked=[], changed=changed or [], digest=digest, reused=True
            )
        checks: dict[str, TableCheck] = {}
        checked: list[str] = []
        if check_elsewhere is not None:
            unchecked = self.unchecked(tables)
            if unchecked:
                for path, check in check_elsewhere(unchecked).items():
                    self.checks.put(self.check_key(tables[path]), check)
                checked = sorted(unchecked)
        for path, table in sorted(tables.items()):
            checks[path], fresh = self.stored_check(table)
            if fresh:
                checked.append(path)
        result = self.judge(checks)
        if self.verdicts is not None:
            self.verdicts.put(digest, result)
        return StateVerdict(result=result, checked=checked, changed=changed or [], digest=digest)

    def judge_stored(
        self,
        tables: Mapping[str, lakefs_client.StoredTable],
        ingested: Callable[[str], DatasetSpec] | None = None,
    ) -> StateVerdict:
        """The verdict on tables already read (the training flow reads them to train anyway);
        ``ingested`` says each one's description (default: the current one)."""
        described = ingested or (lambda _: self.spec)
        return self.judge_tables(
            {
                path: Stored(table.checksum, table.load, described(path))
                for path, table in tables.items()
            }
        )

    def judge_merge(
        self, client: lakefs.Client, *, repository: str, base: str, head: str
    ) -> StateVerdict:
        """The verdict on the state merging ``head`` into ``base`` would produce: ``base``'s
        tables with what ``head`` adds, changes and removes since their merge base. Tables whose
        checks are kept are not read."""
        repo = lakefs.Repository(repository, client=client)
        tables = self.stored(repo.ref(base))
        changes = lakefs_client.table_changes(repo, base=base, head=head, prefix=self.prefix)
        changed = sorted(path for path, kind in changes.items() if kind != "removed")
        at_head = self.stored(repo.ref(head)) if changed else {}
        for path, kind in changes.items():
            if kind == "removed":
                tables.pop(path, None)
            elif path in at_head:
                tables[path] = at_head[path]
        return self.judge_tables(tables, changed=changed)


CheckElsewhere = Callable[[Mapping[str, Stored]], Mapping[str, TableCheck]]
"""Checks stored tables somewhere else than in this process (path → its check)."""


def trainable_rows(
    frame: pd.DataFrame, *, ingested: DatasetSpec, current: DatasetSpec
) -> pd.DataFrame:
    """A stored table's rows as training data under the current description: keyed as ingested
    (each row keeps its side of the training split, :mod:`lakeloop.rowkeys`), then adapted
    (:func:`lakeloop.evolution.adapt`). The caller has checked it can train under ``current``."""
    return evolution.adapt(rowkeys.keyed(frame, ingested), ingested=ingested, current=current)


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
    stored = gate.stored(reference)
    digests = {source.sha256, source.md5} - {""}
    same = next((path for path, table in stored.items() if table.checksum in digests), None)
    if same is not None:
        return Overlap(
            rows=len(frame),
            present=np.ones(len(frame), dtype=bool),
            same_as=same,
            commit_id=lakefs_client.commit_adding(reference, same),
        )
    known = [gate.stored_check(table)[0].fingerprints.get(RECORD) for table in stored.values()]
    held = np.concatenate([keys for keys in known if keys is not None] or [_EMPTY])
    records, kept = record_fingerprints(frame, gate.spec)
    return Overlap(rows=int(kept.sum()), present=np.isin(records, held) & kept)


_EMPTY = np.empty(0, dtype=np.uint64)


@dataclass(frozen=True)
class TableFate:
    """What a description change does to one stored table."""

    path: str
    ingested: str
    """The description it was ingested with (``name@vN``)."""
    rows: int
    fate: str
    """``as it is``, ``adapted: …`` (columns dropped or added as missing) or ``left out: …``."""

    @property
    def trainable(self) -> bool:
        return not self.fate.startswith("left out")


@dataclass(frozen=True)
class Impact:
    """What the production branch's history becomes under a description."""

    spec: DatasetSpec
    tables: list[TableFate]

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)

    @property
    def trainable_rows(self) -> int:
        return sum(table.rows for table in self.tables if table.trainable)

    @property
    def refusals(self) -> list[str]:
        """Why the description cannot be used with this history (empty when it can)."""
        found = []
        renamed = sorted({t.ingested for t in self.tables if "target is" in t.fate})
        if renamed:
            found.append(
                f"the target is {self.spec.target.name}, but tables ingested under "
                f"{', '.join(renamed)} have another target: a target cannot be renamed"
            )
        if self.tables and self.trainable_rows == 0:
            found.append(
                f"no row on main can train under {self.spec.label} "
                f"({self.rows} rows, every table left out)"
            )
        return found


def impact(gate: DataGate, client: lakefs.Client, *, repository: str, ref: str) -> Impact:
    """What each table at ``ref`` becomes under the gate's description (reading only tables whose
    check under it is not kept yet)."""
    reference = lakefs.Repository(repository, client=client).ref(ref)
    fates = []
    for path, table in gate.stored(reference).items():
        old = table.ingested
        check, _ = gate.stored_check(table)
        change = evolution.compare(old, gate.spec)
        if change.excludes_older_tables:
            fate = f"left out: {change.exclusion_reason()}"
        elif change.same_columns:
            fate = "as it is"
        else:
            fate = "adapted: " + "; ".join(change.lines())
        fates.append(TableFate(path=path, ingested=old.label, rows=check.result.rows, fate=fate))
    return Impact(spec=gate.spec, tables=fates)


_GATES: dict[tuple[DatasetSpec, str, Path, str, str | None], DataGate] = {}
_GATES_LOCK = threading.Lock()


def verdict_store(settings: Settings) -> ObjectStore:
    """Where the verdicts on whole states are kept: :data:`VERDICTS` in the settings' store, which
    the gateway and the flows share (on one machine the state folder, apart an ``s3://`` one)."""
    return settings.object_store.child(VERDICTS)


def for_settings(settings: Settings, spec: DatasetSpec) -> DataGate:
    """The data gate of this process for these settings, keeping table checks under the state
    folder and verdicts on whole states in the settings' store (a warm Great Expectations
    validator, built on first use)."""
    key = (
        spec,
        settings.lakefs.data_prefix,
        settings.state_dir,
        settings.store.url,
        settings.store.endpoint_url,
    )
    with _GATES_LOCK:
        if key not in _GATES:
            _GATES[key] = DataGate(
                spec,
                warm_validator,
                prefix=settings.lakefs.data_prefix,
                state_dir=settings.state_dir,
                verdicts=verdict_store(settings),
            )
        return _GATES[key]


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
