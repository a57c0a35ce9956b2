"""Reconcile: find production commits whose training was missed, and train them.

Webhooks can be lost before they ever reach the gateway (lakeFS only logs a failed post-commit or
post-merge hook; the gateway may be down or unreachable; Prefect forgets de-duplicated ids and
triggers across restarts). The gateway's spool covers what reached it; this flow covers the rest
by comparing the truth on both sides: the production branch's history in lakeFS and the finished
training runs in MLflow.

Which commits count (newest first, at most ``depth`` commits of the branch's log):

- only commits on the branch's own line (first parents from the head): the commits of an ingest
  branch that a merge brought along are not commits of the production branch, and lakeFS fired
  no production hook for them;
- not those whose metadata says ``lakeloop.skip_training=true`` (the same rule as the gateway);
- not those that add, change or remove no table under the data prefix, compared with their first
  parent (action installs, docs, the repository's first commit): there is nothing new to learn;
- not those younger than ``min_age_minutes``: their webhook is most likely on its way or training
  right now, and training them here as well would race it;
- not those with a training run still RUNNING in MLflow that started in the last
  :data:`RUNNING_GRACE` (an older RUNNING run is the leftover of a crash, which the training flow
  cleans up itself);
- not those whose data the training flow refused (a FAILED run with a failed validation outcome):
  the data at a commit never changes, so retrying cannot help; a person fixes it with a new commit.

A commit is *trained* when :func:`lakeloop.registry.run_for_commit` finds its finished, judged run.

What gets trained: ``mode="newest"`` (the default) or ``mode="all"``. The training flow reads
every table under the data prefix at the commit, so the newest commit that brought data contains
the data of every commit before it. Training each intermediate commit of a backlog costs minutes
per commit on a laptop, and each of those models would be stale the moment it was registered,
replaced by the next one in the same reconcile run, while each trip through the gate could
briefly promote it (and the API would load it). What a user expects after an outage is "the
served model has seen all the data on main", which training the newest data commit gives. So in
``newest`` mode only the newest commit that brought data is considered: if it is trained (or
refused, or in flight), nothing happens, even when older commits were never trained, because
their data is part of it. ``all`` trains every missed commit, oldest first, for teams that want
a registered version per commit (an audit trail per batch); it also keeps older commits' runs in
history order.

Every training call passes ``reason="reconcile"``, so the run's trigger says why it happened; and
the training flow is idempotent on the commit, so a commit trained meanwhile is skipped. Running
reconcile twice trains nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlflow.tracking import MlflowClient

from lakeloop import lakefs_client, registry
from lakeloop.events import SKIP_TRAINING_KEY
from lakeloop.settings import Settings
from pipelines.reconcile_defaults import DEFAULT_DEPTH, DEFAULT_MIN_AGE_MINUTES, Mode
from pipelines.runtime import PLAIN, Runtime, run_logger, step
from pipelines.train import TrainCommit

REASON = "reconcile"
"""The ``reason`` every training started here carries."""
RUNNING_GRACE = timedelta(hours=2)
"""A RUNNING training run younger than this is a training in flight; an older one was left by a
crash (MLflow unreachable when the run should have ended) and does not block a retrain."""

# Why a commit is or is not trained here.
MISSED = "missed"
TRAINED = "trained"
SKIP_MARKED = f"marked {SKIP_TRAINING_KEY}=true"
NO_DATA = "no table changed"
TOO_RECENT = "too recent: left to its webhook"
IN_PROGRESS = "training in progress"
REFUSED = "data refused by the checks"
COVERED = "covered by a newer commit with data"


@dataclass(frozen=True)
class CommitCheck:
    """What reconcile concluded about one commit of the production branch."""

    commit_id: str
    created: datetime
    state: str
    detail: str = ""


@dataclass(frozen=True)
class Trained:
    """What training one missed commit gave."""

    commit_id: str
    status: str
    """The training flow's status (``promoted``, ``registered``, ``skipped``), or ``failed``."""
    detail: str = ""


@dataclass(frozen=True)
class Reconciled:
    """A reconcile run: every commit examined (newest first) and what was trained."""

    checked: list[CommitCheck]
    trained: list[Trained] = field(default_factory=list)

    @property
    def failed(self) -> list[Trained]:
        return [outcome for outcome in self.trained if outcome.status == "failed"]

    def result(self, mode: Mode) -> dict[str, Any]:
        """What the reconcile flow returns; raises when a missed commit failed to train, naming
        each (the others were still trained)."""
        if failed := self.failed:
            raise RuntimeError(
                f"reconcile trained {len(self.trained) - len(failed)} of {len(self.trained)} "
                "missed commits; "
                + "; ".join(f"{outcome.commit_id:.12}: {outcome.detail}" for outcome in failed)
            )
        return {
            "mode": mode,
            "examined": len(self.checked),
            "missed": [outcome.commit_id for outcome in self.trained],
            "trained": [vars(outcome) for outcome in self.trained],
        }


@step(retries=2, delay_seconds=10)
def check_commits(
    settings: Settings,
    *,
    lakefs: Any,
    mlflow: MlflowClient,
    mode: Mode = "newest",
    depth: int = DEFAULT_DEPTH,
    min_age: timedelta = timedelta(minutes=DEFAULT_MIN_AGE_MINUTES),
    now: datetime | None = None,
) -> list[CommitCheck]:
    """Every commit on the production branch's own line within ``depth``, newest first, with
    what reconcile makes of it (``MISSED``: train it)."""
    if mode not in ("newest", "all"):
        raise ValueError(f"mode must be 'newest' or 'all', not {mode!r}")
    now = now or datetime.now(UTC)
    log = lakefs_client.commit_log(lakefs, settings, ref=settings.lakefs.branch, limit=depth)
    checks: list[CommitCheck] = []
    decided = False  # newest mode: the newest commit with data decided for all older ones
    for commit in first_parent_line(log):
        created = datetime.fromtimestamp(commit.creation_date, UTC)
        if (commit.metadata or {}).get(SKIP_TRAINING_KEY, "").lower() == "true":
            checks.append(CommitCheck(commit.id, created, SKIP_MARKED))
        elif not brings_data(lakefs, settings, commit):
            checks.append(CommitCheck(commit.id, created, NO_DATA))
        elif decided:
            checks.append(CommitCheck(commit.id, created, COVERED))
        else:
            state, detail = _training_state(
                mlflow, settings, commit_id=commit.id, created=created, now=now, min_age=min_age
            )
            checks.append(CommitCheck(commit.id, created, state, detail))
            decided = mode == "newest"
    return checks


def first_parent_line(log: Sequence[Any]) -> list[Any]:
    """The commits of ``log`` (newest first, as lakeFS lists it) that are on the branch's own
    line: the head, its first parent, that one's first parent, and so on."""
    line = []
    wanted = log[0].id if log else None
    for commit in log:
        if commit.id == wanted:
            line.append(commit)
            wanted = commit.parents[0] if commit.parents else None
    return line


def brings_data(client: Any, settings: Settings, commit: Any) -> bool:
    """Whether the commit adds, changes or removes a table under the data prefix, compared with
    its first parent (what a merge brought to the branch). The first commit of a repository has
    no parent and, in lakeFS, no content."""
    if not commit.parents:
        return False
    changes = lakefs_client.diff_refs(client, settings, left=commit.parents[0], right=commit.id)
    return any(
        change.path.startswith(settings.lakefs.data_prefix)
        and change.path.endswith(lakefs_client.TABLE_SUFFIXES)
        for change in changes
    )


def _training_state(
    client: MlflowClient,
    settings: Settings,
    *,
    commit_id: str,
    created: datetime,
    now: datetime,
    min_age: timedelta,
) -> tuple[str, str]:
    """Whether a commit that brought data was trained, is being trained, or was missed."""
    if now - created < min_age:
        return TOO_RECENT, f"committed {created.isoformat()}"
    if (run := registry.run_for_commit(client, settings, commit_id=commit_id)) is not None:
        return TRAINED, f"run {run.info.run_id}"
    refused = registry.runs_of_commit(client, settings, commit_id=commit_id, refused=True, limit=1)
    if refused is None:
        return MISSED, "no training experiment yet"
    if refused:
        return REFUSED, f"run {refused[0].info.run_id}"
    if running := registry.runs_of_commit(
        client,
        settings,
        commit_id=commit_id,
        running=True,
        started_after=now - RUNNING_GRACE,
        limit=1,
    ):
        return IN_PROGRESS, f"run {running[0].info.run_id}"
    return MISSED, ""


def missed_oldest_first(checks: Sequence[CommitCheck]) -> list[CommitCheck]:
    """The commits to train, in the order they landed."""
    return [check for check in reversed(checks) if check.state == MISSED]


def train_missed(
    settings: Settings, missed: Sequence[CommitCheck], *, train: TrainCommit
) -> list[Trained]:
    """Train each missed commit in turn; a failure is recorded and the next one still runs."""
    outcomes = []
    for check in missed:
        try:
            result = train(
                repository=settings.lakefs.repository, commit_id=check.commit_id, reason=REASON
            )
        except Exception as error:  # one bad commit must not hide the others
            run_logger().exception("reconcile: training %s failed", check.commit_id)
            outcomes.append(Trained(check.commit_id, "failed", f"{type(error).__name__}: {error}"))
            continue
        detail = str(result.get("version") or result.get("reason") or "")
        outcomes.append(Trained(check.commit_id, str(result.get("status", "")), detail))
    return outcomes


def reconcile(
    settings: Settings,
    *,
    train: TrainCommit,
    mode: Mode = "newest",
    depth: int = DEFAULT_DEPTH,
    min_age: timedelta = timedelta(minutes=DEFAULT_MIN_AGE_MINUTES),
    lakefs: Any = None,
    mlflow: MlflowClient | None = None,
    now: datetime | None = None,
    runtime: Runtime = PLAIN,
) -> Reconciled:
    """Find the production commits whose training was missed and train them with ``train``
    (see the module docstring for which commits, and ``mode``). The reconcile flow runs this."""
    logger = run_logger()
    checked = runtime.step(check_commits)(
        settings,
        lakefs=lakefs or lakefs_client.connect(settings),
        mlflow=mlflow or registry.connect(settings),
        mode=mode,
        depth=depth,
        min_age=min_age,
        now=now,
    )
    for check in checked:
        if check.state not in (COVERED, NO_DATA, SKIP_MARKED):
            logger.info("%s: %s %s", check.commit_id[:12], check.state, check.detail)
    missed = missed_oldest_first(checked)
    if not missed:
        logger.info("every commit on %s is accounted for", settings.lakefs.branch)
    trained = train_missed(settings, missed, train=train)
    return Reconciled(checked=checked, trained=trained)
