"""Training on a Dask cluster from data its workers read themselves.

With ``TrainingSettings.dask_scheduler`` set, the training flow does not read the commit: it lists
the commit's tables (names, checksums, the descriptions they were ingested with) and hands that
list to the cluster. Each worker reads its tables straight from lakeFS at the commit, through
lakeFS's REST API (lakefs-spec, fsspec for lakeFS: a real lakeFS and the built-in server both
serve it), so the flow's machine never holds the data:

1. **check** (:func:`check_tables`): the tables whose check is not kept are checked on the
   workers (Great Expectations there), and only the checks come back;
2. **read** (:func:`load`): one partition per table, keyed and adapted as the in-process path
   does (:func:`lakeloop.datagate.trainable_rows`);
3. **split** (:func:`train`): :func:`lakeloop.model.plan_keys` per partition, one
   :func:`lakeloop.model.split_plan` from all of them (on a worker: for a time split, where the
   rows in time order are cut), then :func:`lakeloop.model.place_rows` per partition, the very
   functions the in-process split is made of;
4. **encode and fit**: the dataset's encoder per partition, ``xgboost.dask`` on the encoded
   partitions (:meth:`lakeloop.trainer.Trainer.fit_on_cluster`);
5. **score**: the holdout is gathered on one worker and judged there by
   :func:`lakeloop.model.evaluate`, as in process; it stays there
   (:class:`lakeloop.model.ClusterHoldout`) for the champion's score on the same rows.

The flow process receives counts, dtypes, metrics, a bounded sample for the plots and the
booster. The lakeFS credentials travel to the workers inside each task as a
:class:`pydantic.SecretStr`, whose ``repr`` (what Dask's logs and dashboard show of a task's
arguments) hides the secret. The workers need lakeloop installed (the image has it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import SecretStr

from lakeloop import datagate, evaluation, lakefs_client, model, registry
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings, TrainingSettings
from lakeloop.trainer import ClusterSplit, Trainer
from lakeloop.validation.checks import warm_validator

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client, Future
    from lakefs_spec import LakeFSFileSystem

_TARGET = "__lakeloop_target__"
"""The target's column beside the encoded features of a partition (never a feature's name)."""


class ClusterError(RuntimeError):
    """The Dask cluster cannot train: no scheduler answers, or it has no worker."""


class LakeFSUnreachableError(OSError):
    """A Dask worker could not read a table from lakeFS; the message names both."""


@dataclass(frozen=True)
class LakeFSAccess:
    """How a Dask worker reaches lakeFS. ``repr`` shows the secret as ``**********``."""

    endpoint: str
    access_key_id: str
    secret: SecretStr

    @classmethod
    def for_settings(cls, settings: Settings) -> LakeFSAccess:
        """The flow's credentials, at the address the workers use
        (``training.dask_lakefs_endpoint``, else the flow's own)."""
        return cls(
            endpoint=settings.training.dask_lakefs_endpoint or settings.lakefs_endpoint,
            access_key_id=settings.lakefs.access_key_id,
            secret=SecretStr(settings.lakefs_secret()),
        )

    def filesystem(self) -> LakeFSFileSystem:
        """lakeFS as an fsspec file system (``repository/ref/path``), made once per worker."""
        from lakefs_spec import LakeFSFileSystem  # noqa: PLC0415 - only workers read this way

        return LakeFSFileSystem(
            host=self.endpoint,
            username=self.access_key_id,
            password=self.secret.get_secret_value(),
        )


@dataclass(frozen=True)
class TableRef:
    """One table of a commit, as the flow knows it without reading it."""

    path: str
    checksum: str
    ingested: DatasetSpec
    """The description its batch was ingested with."""

    @property
    def feedback(self) -> bool:
        return datagate.is_feedback_table(self.path)


@dataclass(frozen=True)
class Source:
    """Where the workers read a commit's tables: lakeFS, the repository and the commit."""

    access: LakeFSAccess
    repository: str
    commit_id: str

    def read(self, path: str) -> pd.DataFrame:
        """One stored table, parsed as everywhere else (:func:`lakefs_client.parse_table`).
        :class:`LakeFSUnreachableError` when lakeFS cannot be reached from here;
        :class:`lakefs_client.UnreadableTableError` when the table cannot be read or parsed."""
        where = f"{self.repository}/{self.commit_id}/{path}"
        try:
            with self.access.filesystem().open(where, "rb") as handle:
                content = handle.read()
        except Exception as error:  # lakefs-spec's OSErrors; urllib3's for a connection
            if not _answered(error):
                raise LakeFSUnreachableError(
                    f"Dask worker {_worker()} cannot reach lakeFS at {self.access.endpoint} to "
                    f"read {path} at {self.commit_id:.12}: {type(error).__name__}: {error}. Set "
                    "LAKELOOP_TRAINING__DASK_LAKEFS_ENDPOINT to the address the workers reach "
                    "lakeFS at"
                ) from error
            raise lakefs_client.UnreadableTableError(
                f"cannot read {path} at {self.commit_id:.12} from lakeFS at "
                f"{self.access.endpoint} on Dask worker {_worker()}: {error}"
            ) from error
        return lakefs_client.parse_table(content, path=path, ref=self.commit_id)


def _answered(error: BaseException) -> bool:
    """Whether lakeFS answered (an HTTP status, which the SDK raises as its ServerException and
    lakefs-spec translates to an OSError caused by it), rather than not being reached at all."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, lakefs_client.LakeFSError | FileNotFoundError | PermissionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _worker() -> str:
    from distributed import get_worker  # noqa: PLC0415

    try:
        return str(get_worker().address)
    except ValueError:  # not on a worker (a test calling the function directly)
        return "(none)"


@contextlib.contextmanager
def connect(training: TrainingSettings) -> Iterator[Client]:
    """A client of the configured Dask scheduler, once it has a worker; :class:`ClusterError`
    naming the address when no scheduler answers or no worker joins in time."""
    from distributed import Client  # noqa: PLC0415 - in-process training never imports it

    address = training.dask_scheduler
    assert address is not None
    try:
        client = Client(address, set_as_default=False, timeout=training.dask_worker_timeout_seconds)
    except OSError as error:
        raise ClusterError(
            f"no Dask scheduler answers at {address} (LAKELOOP_TRAINING__DASK_SCHEDULER): {error}"
        ) from error
    with client:
        try:
            client.wait_for_workers(1, timeout=training.dask_worker_timeout_seconds)
        except TimeoutError as error:
            raise ClusterError(
                f"the Dask cluster at {address} has no worker: none joined in "
                f"{training.dask_worker_timeout_seconds:g} s; nothing was trained"
            ) from error
        yield client


def check_tables(
    client: Client, source: Source, tables: Mapping[str, datagate.Stored], spec: DatasetSpec
) -> dict[str, datagate.TableCheck]:
    """Each table checked on a worker (read there, judged by the description it was ingested
    with: :meth:`lakeloop.datagate.DataGate.check_table`); a table that cannot be read fails its
    check with the reason, as in process. Only the checks come back."""
    futures = {
        path: client.submit(_check, source, path, table.ingested, spec, pure=False)
        for path, table in tables.items()
    }
    return {path: future.result() for path, future in futures.items()}


_WORKER_GATES: dict[DatasetSpec, datagate.DataGate] = {}
_WORKER_GATES_LOCK = threading.Lock()


def _check(
    source: Source, path: str, ingested: DatasetSpec, spec: DatasetSpec
) -> datagate.TableCheck:
    """On a worker: one table's check, with a data gate kept warm on that worker."""
    with _WORKER_GATES_LOCK:
        gate = _WORKER_GATES.get(spec)
        if gate is None:
            gate = _WORKER_GATES[spec] = datagate.DataGate(
                spec, warm_validator, prefix="", state_dir=None
            )
    try:
        frame = source.read(path)
    except lakefs_client.UnreadableTableError as error:
        return datagate.unreadable(str(error))
    return gate.check_table(frame, ingested=ingested)


@dataclass(frozen=True)
class ClusterData:
    """A commit's training rows held by the cluster's workers, one partition per table: what
    the flow holds instead of the rows."""

    client: Client
    """The client whose futures hold the rows (open while they are used)."""
    tables: tuple[TableRef, ...]
    parts: tuple[Future, ...]
    """Each table's rows under the current description (pandas, on a worker)."""
    rows: tuple[int, ...]
    """Each table's row count."""


def load(
    client: Client, source: Source, tables: Sequence[TableRef], spec: DatasetSpec
) -> ClusterData:
    """The tables read and made training rows on the workers (see the module's docstring); a
    table that cannot be read fails the training, naming it (and lakeFS's address when a worker
    cannot reach it)."""
    parts = [client.submit(_rows, source, table, spec, pure=False) for table in tables]
    rows = tuple(int(count) for count in client.gather([client.submit(len, p) for p in parts]))
    return ClusterData(client=client, tables=tuple(tables), parts=tuple(parts), rows=rows)


def _rows(source: Source, table: TableRef, spec: DatasetSpec) -> pd.DataFrame:
    return datagate.trainable_rows(source.read(table.path), ingested=table.ingested, current=spec)


@dataclass(frozen=True)
class _Placed:
    """One partition's rows in each part of the split (on a worker)."""

    fit: pd.DataFrame
    stop: pd.DataFrame
    holdout: pd.DataFrame
    held: pd.DataFrame | None
    set_aside: int
    rows: int
    target_low: float
    target_high: float


def _keys(part: pd.DataFrame, spec: DatasetSpec, feedback: bool) -> pd.DataFrame | None:
    rows, marked = model.with_target(part, spec, _marks(part, feedback))
    return model.plan_keys(rows, spec, marked)


def _plan(
    spec: DatasetSpec, training: TrainingSettings, *keys: pd.DataFrame | None
) -> model.SplitPlan:
    found = [key for key in keys if key is not None]
    return model.split_plan(pd.concat(found) if found else None, spec, training)


def _place(
    part: pd.DataFrame,
    spec: DatasetSpec,
    training: TrainingSettings,
    plan: model.SplitPlan,
    feedback: bool,
) -> _Placed:
    rows, marked = model.with_target(part, spec, _marks(part, feedback))
    placed = model.place_rows(rows, spec, training, plan, marked)
    target = rows[spec.target.name].to_numpy(dtype=float)
    return _Placed(
        fit=rows.iloc[placed.fit],
        stop=rows.iloc[placed.stop],
        holdout=rows.iloc[placed.holdout],
        held=None if placed.held is None else rows.iloc[placed.held],
        set_aside=placed.set_aside,
        rows=len(rows),
        target_low=float(target.min()) if len(target) else np.inf,
        target_high=float(target.max()) if len(target) else -np.inf,
    )


def _marks(part: pd.DataFrame, feedback: bool) -> np.ndarray:
    return np.full(len(part), feedback)


def _counts(placed: _Placed) -> dict[str, float]:
    return {
        "fit": len(placed.fit),
        "stop": len(placed.stop),
        "holdout": len(placed.holdout),
        "held": 0 if placed.held is None else len(placed.held),
        "set_aside": placed.set_aside,
        "rows": placed.rows,
        "low": placed.target_low,
        "high": placed.target_high,
    }


def _encoded(placed: _Placed, part: str, spec: DatasetSpec) -> pd.DataFrame:
    rows: pd.DataFrame = getattr(placed, part)
    encoder = model.feature_encoder(spec)
    return encoder.transform(rows[spec.feature_names]).assign(
        **{_TARGET: rows[spec.target.name].to_numpy()}
    )


def _gathered(part: str, spec: DatasetSpec, *placed: _Placed) -> pd.DataFrame:
    """One part of the split from every partition, on one worker: the described columns only,
    as :func:`lakeloop.model.evaluate` keeps a holdout."""
    frames = [getattr(one, part) for one in placed if getattr(one, part) is not None]
    return pd.concat(frames)[spec.columns]


def _learned_targets(spec: DatasetSpec, *placed: _Placed) -> pd.DataFrame:
    """The fit and early-stopping rows' targets (the baseline's median is theirs)."""
    name = spec.target.name
    return pd.concat([frame[[name]] for one in placed for frame in (one.fit, one.stop)])


def train(
    data: ClusterData,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    params: Mapping[str, Any] | None = None,
    tune: bool = False,
    trainer: Trainer = model.TRAINER,
) -> model.TrainedModel:
    """Split, encode, fit (the best of a search, with ``tune``) and judge on the cluster (see
    the module's docstring): the model :func:`lakeloop.model.train` (or ``tune``) would make of
    the same rows, its holdout kept on the cluster."""
    client = data.client
    parts = [
        (part, table.feedback)
        for part, table, rows in zip(data.parts, data.tables, data.rows, strict=True)
        if rows
    ]
    keys = [client.submit(_keys, part, spec, feedback) for part, feedback in parts]
    plan = client.submit(_plan, spec, training, *keys)
    placed = [
        client.submit(_place, part, spec, training, plan, feedback) for part, feedback in parts
    ]
    counts: list[dict[str, float]] = client.gather([client.submit(_counts, one) for one in placed])
    total = {name: sum(count[name] for count in counts) for name in counts[0]} if counts else {}
    low = min((count["low"] for count in counts), default=np.inf)
    high = max((count["high"] for count in counts), default=-np.inf)
    model.check_split(
        fit=int(total.get("fit", 0)),
        stop=int(total.get("stop", 0)),
        holdout=int(total.get("holdout", 0)),
        rows=int(total.get("rows", 0)),
        distinct_targets=2 if high > low else 1,
        spec=spec,
    )
    rows = _cluster_split(client, placed, counts, spec)
    chosen = trainer.hyperparameters(training) | dict(params or {})
    encoder = model.feature_encoder(spec)

    def fit(params: dict[str, Any]) -> Any:
        return model.composed(encoder, trainer.fit_on_cluster(client, rows, training, params))

    trials: tuple[model.Trial, ...] = ()
    if tune:
        stop = client.submit(_gathered, "stop", spec, *placed)
        trials, best, pipeline = model.search(
            training,
            fit=fit,
            score_stop=lambda pipeline: client.submit(_score, pipeline, stop, spec).result(),
            trainer=trainer,
        )
        chosen = best.params
    else:
        pipeline = fit(chosen)
    with_clean = int(total["held"]) >= 2  # fewer make no score (model.split_rows)
    holdout = client.submit(_gathered, "holdout", spec, *placed)
    clean = client.submit(_gathered, "held", spec, *placed) if with_clean else None
    judged: _Judged = client.submit(
        _judge,
        pipeline,
        holdout,
        clean=clean,
        learned=client.submit(_learned_targets, spec, *placed),
        spec=spec,
        params=chosen,
        set_aside=int(total["set_aside"]),
        trainer=trainer,
    ).result()
    return replace(
        judged.trained,
        holdout=_kept(client, holdout, judged.holdout),
        clean_holdout=None
        if clean is None or judged.clean is None
        else _kept(client, clean, judged.clean),
        trials=trials,
        hyperparameters_from="tuning" if tune else "settings",
    )


def _kept(client: Client, rows: Future, facts: _Facts) -> model.ClusterHoldout:
    """A holdout the worker that gathered it keeps, as this process sees it."""

    def run(function: Any) -> Any:
        return client.submit(function, rows, pure=False).result()

    return model.ClusterHoldout(
        rows=facts.rows,
        columns=facts.columns,
        digest=facts.digest,
        sample=facts.sample,
        segment_metrics=facts.segment_metrics,
        run=run,
    )


def _cluster_split(
    client: Client, placed: list[Future], counts: list[dict[str, float]], spec: DatasetSpec
) -> ClusterSplit:
    """The encoded fit and early-stopping rows as Dask collections, in as many contiguous chunks
    as there are workers, one placed on each: xgboost.dask trains on the workers that hold rows,
    and each of them needs some of both (a worker with fit rows and no early-stopping rows breaks
    its collective evaluation), whatever tables the split put them in. The scheduler alone might
    also leave every partition of a small graph on one worker."""
    import dask.dataframe as dd  # noqa: PLC0415 - in-process training never imports Dask

    fit_rows = [int(count["fit"]) for count in counts]
    stop_rows = [int(count["stop"]) for count in counts]
    workers = sorted(client.nthreads())[
        : min(len(client.nthreads()), sum(fit_rows), sum(stop_rows))
    ]

    def frame(part: str, rows: list[int]) -> dd.DataFrame:
        encoded = [client.submit(_encoded, one, part, spec) for one in placed]
        chunks = _chunks(client, encoded, rows, workers)
        meta = client.submit(_no_rows, chunks[0]).result()
        collection: dd.DataFrame = dd.from_delayed(chunks, meta=meta, verify_meta=False)
        return collection

    fit, stop = frame("fit", fit_rows), frame("stop", stop_rows)
    features = [column for column in fit.columns if column != _TARGET]
    return ClusterSplit(fit[features], fit[_TARGET], stop[features], stop[_TARGET])


def _chunks(
    client: Client, parts: list[Future], rows: list[int], workers: list[str]
) -> list[Future]:
    """``parts`` (of ``rows`` rows each) as one contiguous chunk per worker, each made on its
    worker from the parts it overlaps (the rows move once)."""
    offsets = np.cumsum([0, *rows])
    bounds = np.linspace(0, offsets[-1], num=len(workers) + 1).astype(int)
    chunks = []
    for worker, start, end in zip(workers, bounds[:-1], bounds[1:], strict=True):
        overlapping = [
            index
            for index in range(len(parts))
            if offsets[index] < end and offsets[index + 1] > start and rows[index]
        ]
        slices = [
            (
                int(max(start, offsets[index]) - offsets[index]),
                int(min(end, offsets[index + 1]) - offsets[index]),
            )
            for index in overlapping
        ]
        chunks.append(
            client.submit(
                _slices,
                slices,
                *[parts[index] for index in overlapping],
                workers=[worker],
                allow_other_workers=False,
            )
        )
    return chunks


def _slices(slices: list[tuple[int, int]], *frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(
        [frame.iloc[start:end] for (start, end), frame in zip(slices, frames, strict=True)]
    )


def _no_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


def _score(pipeline: Any, rows: pd.DataFrame, spec: DatasetSpec) -> dict[str, float]:
    return model.score(pipeline, rows, spec)


@dataclass(frozen=True)
class _Facts:
    """What this process keeps of a holdout the cluster keeps (see model.ClusterHoldout)."""

    rows: int
    columns: pd.DataFrame
    digest: str
    sample: pd.DataFrame
    segment_metrics: dict[str, float]


@dataclass(frozen=True)
class _Judged:
    """What a worker hands back of a model judged on the holdout it keeps."""

    trained: model.TrainedModel
    """Without its holdout rows (they stay on the worker)."""
    holdout: _Facts
    clean: _Facts | None


def _judge(
    pipeline: Any,
    holdout: pd.DataFrame,
    *,
    clean: pd.DataFrame | None,
    learned: pd.DataFrame,
    spec: DatasetSpec,
    params: dict[str, Any],
    set_aside: int,
    trainer: Trainer,
) -> _Judged:
    """On a worker: :func:`lakeloop.model.evaluate` on the holdout, as in process (the fit and
    early-stopping rows only by their target, which the baseline's median needs)."""
    split = model.Split(
        fit=learned,
        stop=learned.iloc[:0],
        holdout=holdout,
        clean_holdout=clean,
        set_aside_rows=set_aside,
    )
    trained = model.evaluate(pipeline, split, spec, params=params, trainer=trainer)
    sample = holdout[[spec.target.name]].assign(predicted=trained.predicted)
    if len(sample) > model.SAMPLE_ROWS:
        sample = sample.sample(model.SAMPLE_ROWS, random_state=0)
    return _Judged(
        trained=replace(
            trained, holdout=holdout.iloc[:0], predicted=np.empty(0), clean_holdout=None
        ),
        holdout=_Facts(
            rows=len(holdout),
            columns=holdout.iloc[:0],
            digest=registry.frame_digest(holdout),
            sample=sample,
            segment_metrics=evaluation.segment_metrics(trained, spec),
        ),
        clean=None
        if clean is None
        else _Facts(
            rows=len(clean),
            columns=clean.iloc[:0],
            digest=registry.frame_digest(clean),
            sample=clean.iloc[:0],
            segment_metrics={},
        ),
    )
