"""Batch results on a Prometheus Pushgateway: what the flows validated, trained and promoted.

A flow lives for minutes, so Prometheus cannot scrape it: each result replaces its group on the
Pushgateway (HTTP PUT), and Prometheus scrapes the Pushgateway with ``honor_labels``. One group
per dataset (validation) and per registered model (training), so the number of series stays
bounded whatever the number of runs.

Counts. The Pushgateway has no counters of its own: it keeps the last value pushed. Runs and
promotions are therefore counted read-modify-push: read the group's current ``..._total``,
add this run, push the whole group back. Prometheus's ``increase()`` works on the result
like on any counter, and a Pushgateway restart without ``--persistence.file`` is a counter
reset, which ``increase()`` already handles. The price: two runs of the same model finishing
within the same few milliseconds may count once (the promotion lock in the training flow makes
this rare for promotions). Each group also carries a ``..._last_run_timestamp_seconds`` so a
dashboard can show when something last happened without any count.

Counts from the start. ``increase()`` measures a counter from its first sample, so a series
whose first sample is already 1 adds nothing: the first promotion, the first drift retrain, the
first failed validation would be lost. Every push therefore carries each counter's every known
label combination (:data:`VALIDATION_OUTCOMES`, :data:`TRAINING_TRIGGERS` x promoted,
``folded``), at zero until it happens, and :func:`seed_counters` puts the zeros on the
Pushgateway before a group's first run (the training flow calls it as it starts): an event
counts once Prometheus has scraped its zero.

Metrics are observability, not the product: a Pushgateway that is down must not fail a training
run that already promoted a model. The ``push_*`` functions log a warning and return ``False``
instead of raising; with no URL configured they do nothing.

The monitor's drift numbers are pushed by :mod:`monitoring.store` under job ``lakeloop_monitor``
with the names listed in ``monitoring.store.metrics_registry``; :func:`replace_group` is the
one place that talks to the Pushgateway, for it too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import httpx
from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

VALIDATION_JOB = "lakeloop_validation"
"""Pushgateway job of data validation results; one group per dataset."""
TRAINING_JOB = "lakeloop_training"
"""Pushgateway job of training results; one group per registered model."""
FEEDBACK_JOB = "lakeloop_feedback"
"""Pushgateway job of the checks of reported values before a retrain folds them."""
TIMEOUT = 10.0

VALIDATION_OUTCOMES = ("passed", "failed")
TRAINING_TRIGGERS = ("commit", "drift", "alert", "reconcile", "manual")
"""``lakeloop.registry.TRIGGER_KINDS``, repeated so pushing metrics does not import the registry
(and MLflow); a test keeps them equal."""
BOOLEANS = ("false", "true")

Labels = frozenset[tuple[str, str]]
Group = dict[str, dict[Labels, float]]
"""One Pushgateway group as read back: sample name -> labels beyond the group's -> value."""
_Builder = Callable[[Group], list[Metric]]
"""Builds one push's metric families from what the group held before."""


def replace_group(
    url: str,
    registry: CollectorRegistry,
    *,
    job: str,
    grouping_key: Mapping[str, str],
    timeout: float = TIMEOUT,
) -> None:
    """Replace one group on the Pushgateway with ``registry`` (HTTP PUT); raises on failure.

    Metrics of an earlier push that this one lacks disappear, so a renamed feature or a metric
    no longer computed does not linger with a stale value."""
    push_to_gateway(
        url, job=job, registry=registry, grouping_key=dict(grouping_key), timeout=timeout
    )


def read_group(
    url: str, *, job: str, grouping_key: Mapping[str, str], timeout: float = TIMEOUT
) -> Group:
    """The samples the Pushgateway holds for one group ({} when it holds none)."""
    base = url if "://" in url else f"http://{url}"
    response = httpx.get(f"{base.rstrip('/')}/metrics", timeout=timeout)
    response.raise_for_status()
    wanted = {"job": job, **grouping_key}
    group: Group = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if any(sample.labels.get(key) != value for key, value in wanted.items()):
                continue
            extra = frozenset(
                (key, value)
                for key, value in sample.labels.items()
                if key not in wanted and key != "instance"
            )
            group.setdefault(sample.name, {})[extra] = sample.value
    return group


def push_validation(
    url: str | None,
    *,
    dataset: str,
    commit_id: str,
    success: bool,
    failed_expectations: int,
    rows: int,
    now: float | None = None,
    timeout: float = TIMEOUT,
) -> bool:
    """Push one validation run of ``dataset`` at lakeFS ``commit_id``: outcome, broken
    expectations (failure severity), rows checked, and the count of runs by outcome.

    Returns whether the Pushgateway took it (``False`` also when ``url`` is ``None``)."""
    if url is None:
        return False
    grouping = {"dataset": dataset}
    outcome = "passed" if success else "failed"
    at = time.time() if now is None else now

    def families(previous: Group) -> list[Metric]:
        return [
            _gauge("lakeloop_validation_success", "1 when the last batch passed.", int(success)),
            _gauge(
                "lakeloop_validation_failed_expectations",
                "Failure-severity expectations the last batch broke.",
                failed_expectations,
            ),
            _gauge("lakeloop_validation_rows", "Rows the last validation checked.", rows),
            _gauge(
                "lakeloop_validation_last_run_timestamp_seconds",
                "When data was last validated.",
                at,
            ),
            _info(
                "lakeloop_validation_commit_info",
                "The lakeFS commit last validated (value 1 on its label).",
                {"commit_id": commit_id},
            ),
            _counted(*_VALIDATION_RUNS, previous, {"outcome": outcome}),
        ]

    return _read_modify_push(
        url, job=VALIDATION_JOB, grouping_key=grouping, families=families, timeout=timeout
    )


def push_training(
    url: str | None,
    *,
    model_name: str,
    version: str,
    metrics: Mapping[str, float],
    promoted: bool,
    trigger: str,
    now: float | None = None,
    timeout: float = TIMEOUT,
) -> bool:
    """Push one training run of ``model_name``: the registered ``version``, its holdout
    ``metrics`` (``mae``, ``rmse``, ... in the target's units), whether the gate promoted it,
    and the count of runs by ``trigger`` (``commit``, ``drift``, ``manual``: keep it to
    :func:`lakeloop.registry.trigger_kind`'s few values) and by promotion.

    ``version`` is an MLflow registry version (an integer as text). Returns whether the
    Pushgateway took it (``False`` also when ``url`` is ``None``)."""
    if url is None:
        return False
    at = time.time() if now is None else now

    def families(previous: Group) -> list[Metric]:
        holdout = GaugeMetricFamily(
            "lakeloop_training_holdout_metric",
            "Holdout metrics of the last model trained (MAE, RMSE in target units; R2).",
            labels=["metric"],
        )
        for name, value in sorted(metrics.items()):
            holdout.add_metric([name], value)
        last_promotion = previous.get("lakeloop_training_last_promotion_timestamp_seconds", {})
        promoted_at = at if promoted else last_promotion.get(frozenset())
        return [
            holdout,
            _gauge(
                "lakeloop_training_model_version",
                "Registry version of the last model trained.",
                float(version),
            ),
            _gauge("lakeloop_training_promoted", "1 when the last model was promoted.", promoted),
            _gauge(
                "lakeloop_training_last_run_timestamp_seconds", "When a model was last trained.", at
            ),
            *(
                []
                if promoted_at is None
                else [
                    _gauge(
                        "lakeloop_training_last_promotion_timestamp_seconds",
                        "When a model was last promoted to champion.",
                        promoted_at,
                    )
                ]
            ),
            _counted(
                *_TRAINING_RUNS, previous, {"trigger": trigger, "promoted": str(promoted).lower()}
            ),
        ]

    return _read_modify_push(
        url,
        job=TRAINING_JOB,
        grouping_key={"model_name": model_name},
        families=families,
        timeout=timeout,
    )


def push_feedback_check(
    url: str | None,
    *,
    model_name: str,
    folded: bool,
    factor: float | None,
    now: float | None = None,
    timeout: float = TIMEOUT,
) -> bool:
    """Push what a retrain did with a window's reported values: the count of windows folded and
    held back, and the factor between the last window's values and the champion's predictions
    (monitoring.labels; 1 = as on its holdout). Returns whether the Pushgateway took it."""
    if url is None:
        return False
    at = time.time() if now is None else now

    def families(previous: Group) -> list[Metric]:
        return [
            *(
                []
                if factor is None
                else [
                    _gauge(
                        "lakeloop_feedback_label_factor",
                        "Reported values of the last window folded or held back, as a factor of "
                        "the champion's predictions against its holdout (1 = as usual).",
                        factor,
                    )
                ]
            ),
            _gauge(
                "lakeloop_feedback_last_check_timestamp_seconds",
                "When a window's reported values were last checked.",
                at,
            ),
            _counted(*_FEEDBACK_WINDOWS, previous, {"folded": str(folded).lower()}),
        ]

    return _read_modify_push(
        url,
        job=FEEDBACK_JOB,
        grouping_key={"model_name": model_name},
        families=families,
        timeout=timeout,
    )


_Counter = tuple[str, str, list[dict[str, str]]]
"""A counter's name, help text and every label combination it can take."""
_VALIDATION_RUNS: _Counter = (
    "lakeloop_validation_runs",
    "Validation runs, by outcome.",
    [{"outcome": outcome} for outcome in VALIDATION_OUTCOMES],
)
_TRAINING_RUNS: _Counter = (
    "lakeloop_training_runs",
    "Training runs, by trigger and by whether the model was promoted.",
    [
        {"trigger": trigger, "promoted": promoted}
        for trigger in TRAINING_TRIGGERS
        for promoted in BOOLEANS
    ],
)
_FEEDBACK_WINDOWS: _Counter = (
    "lakeloop_feedback_windows",
    "Windows of reported values a retrain checked, by whether they were folded.",
    [{"folded": folded} for folded in BOOLEANS],
)


def seed_counters(
    url: str | None, *, dataset: str, model_name: str, timeout: float = TIMEOUT
) -> bool:
    """Put every counter of the ``dataset``'s validation group and the ``model_name``'s training
    and feedback groups on the Pushgateway, each label combination not there yet at zero, so
    the first run's event is counted by ``increase()`` (call it well before that run pushes:
    Prometheus must scrape the zeros first). Counts already there are kept, and so are the
    groups' other metrics (an HTTP POST replaces only the counters). Returns whether every
    group was seeded (``False`` also when ``url`` is ``None``); never raises."""
    if url is None:
        return False
    seeded = [
        _seed(url, job=job, grouping_key=key, counter=counter, timeout=timeout)
        for job, key, counter in (
            (VALIDATION_JOB, {"dataset": dataset}, _VALIDATION_RUNS),
            (TRAINING_JOB, {"model_name": model_name}, _TRAINING_RUNS),
            (FEEDBACK_JOB, {"model_name": model_name}, _FEEDBACK_WINDOWS),
        )
    ]
    return all(seeded)


def _seed(
    url: str, *, job: str, grouping_key: Mapping[str, str], counter: _Counter, timeout: float
) -> bool:
    name, _, combinations = counter
    try:
        previous = read_group(url, job=job, grouping_key=grouping_key, timeout=timeout)
        held = previous.get(f"{name}_total", {})
        if all(frozenset(labels.items()) in held for labels in combinations):
            return True
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([_counted(*counter, previous, None)]))
        pushadd_to_gateway(
            url, job=job, registry=registry, grouping_key=dict(grouping_key), timeout=timeout
        )
    except (httpx.HTTPError, OSError) as error:
        logger.warning(
            "counters of %s %s not seeded on the Pushgateway at %s: %s",
            job,
            dict(grouping_key),
            url,
            error,
        )
        return False
    return True


class _Families:
    """A collector holding one push's metric families, built beforehand."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _read_modify_push(
    url: str,
    *,
    job: str,
    grouping_key: Mapping[str, str],
    families: _Builder,
    timeout: float,
) -> bool:
    try:
        previous = read_group(url, job=job, grouping_key=grouping_key, timeout=timeout)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families(previous)))
        replace_group(url, registry, job=job, grouping_key=grouping_key, timeout=timeout)
    # httpx (the read) and urllib (the push, an OSError) errors: down, or refused the push.
    except (httpx.HTTPError, OSError) as error:
        logger.warning(
            "metrics of %s %s not pushed to the Pushgateway at %s: %s",
            job,
            dict(grouping_key),
            url,
            error,
        )
        return False
    return True


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _info(name: str, documentation: str, labels: Mapping[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), 1.0)
    return family


def _counted(
    name: str,
    documentation: str,
    combinations: list[dict[str, str]],
    previous: Group,
    this_run: Mapping[str, str] | None,
) -> CounterMetricFamily:
    """The counter ``name`` as the Pushgateway held it, with this run (if any) added to its
    labels, and every label combination not seen yet at zero.

    Built as a family without ``_created``: a created time reset on every push would tell
    Prometheus the counter restarted each time."""
    counts = dict(previous.get(f"{name}_total", {}))
    for combination in combinations:
        counts.setdefault(frozenset(combination.items()), 0.0)
    if this_run is not None:
        key = frozenset(this_run.items())
        counts[key] = counts.get(key, 0.0) + 1
    label_names = sorted(combinations[0])
    family = CounterMetricFamily(name, documentation, labels=label_names)
    for labels, count in sorted(counts.items(), key=lambda item: sorted(item[0])):
        values = dict(labels)
        if set(values) == set(label_names):  # a label set from an older schema is dropped
            family.add_metric([values[label] for label in label_names], count)
    return family
