"""The first event a counter counts, against a real Pushgateway scraped by a real Prometheus.

``increase()`` measures from a series' first sample: a counter pushed for the first time at 1
adds nothing. With :func:`lakeloop.pushmetrics.seed_counters` the zeros are there first, so the
first promotion is an increase of 1; without them it is 0."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lakeloop import pushmetrics, registry
from tests.utils.net import free_port
from tests.utils.prometheus import (
    PrometheusClient,
    config_for,
    poll,
    prometheus_on,
    pushgateway_service,
    running,
)

pytestmark = pytest.mark.integration


@dataclass
class Scraped:
    prometheus: PrometheusClient
    pushgateway: str


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    state = tmp_path_factory.mktemp("first-counts")
    with running(pushgateway_service(), state_dir=state / "pushgateway") as gateway:
        # No API in this test: its scrape target is a port nobody listens on.
        config = config_for(
            api=f"127.0.0.1:{free_port()}", pushgateway=gateway.removeprefix("http://")
        )
        with prometheus_on(config, folder=state) as url:
            yield Scraped(PrometheusClient(url), gateway)


def value(prometheus: PrometheusClient, expr: str) -> float | None:
    found = prometheus.query(expr)
    return float(found[0]["value"][1]) if found else None


def promote_first(scraped: Scraped, model_name: str) -> float:
    """Push ``model_name``'s first training run, a promotion, once Prometheus has seen whatever
    the group held; the increase over the last minute once Prometheus has the run."""
    series = f'lakeloop_training_runs_total{{model_name="{model_name}",promoted="true"}}'
    assert pushmetrics.push_training(
        scraped.pushgateway,
        model_name=model_name,
        version="1",
        metrics={"mae": 1.0},
        promoted=True,
        trigger="commit",
    )
    poll(lambda: value(scraped.prometheus, f"sum({series})") == 1 or None, what="the promotion")
    # A few more scrapes of the 1, as a panel over a window after the promotion would see.
    poll(
        lambda: value(scraped.prometheus, f"count_over_time({series}[1m]) >= 3") or None,
        what="scrapes after the promotion",
    )
    increase = value(scraped.prometheus, f"sum(increase({series}[1m]))")
    assert increase is not None
    return increase


def test_the_first_promotion_counts_once_the_counters_are_seeded(scraped: Scraped) -> None:
    assert pushmetrics.seed_counters(scraped.pushgateway, dataset="first", model_name="seeded")
    zero = 'lakeloop_training_runs_total{model_name="seeded",trigger="commit",promoted="true"}'
    poll(lambda: value(scraped.prometheus, zero) == 0 or None, what="the seeded zero")
    assert promote_first(scraped, "seeded") == pytest.approx(1, abs=0.5)


def test_without_the_zeros_the_first_promotion_is_lost(scraped: Scraped) -> None:
    assert promote_first(scraped, "unseeded") == 0


def test_every_push_carries_the_combinations_not_seen_yet(scraped: Scraped) -> None:
    pushmetrics.push_training(
        scraped.pushgateway,
        model_name="combinations",
        version="1",
        metrics={},
        promoted=True,
        trigger="commit",
    )
    found = pushmetrics.read_group(
        scraped.pushgateway,
        job=pushmetrics.TRAINING_JOB,
        grouping_key={"model_name": "combinations"},
    )
    runs = found["lakeloop_training_runs_total"]
    assert runs[frozenset({("trigger", "drift"), ("promoted", "true")})] == 0
    assert runs[frozenset({("trigger", "commit"), ("promoted", "true")})] == 1
    assert len(runs) == len(pushmetrics.TRAINING_TRIGGERS) * 2


def test_seeding_keeps_counts_and_the_groups_other_metrics(scraped: Scraped) -> None:
    pushmetrics.push_validation(
        scraped.pushgateway,
        dataset="kept",
        commit_id="c1",
        success=False,
        failed_expectations=2,
        rows=10,
    )
    assert pushmetrics.seed_counters(scraped.pushgateway, dataset="kept", model_name="kept")
    found = pushmetrics.read_group(
        scraped.pushgateway, job=pushmetrics.VALIDATION_JOB, grouping_key={"dataset": "kept"}
    )
    runs = found["lakeloop_validation_runs_total"]
    assert runs == {
        frozenset({("outcome", "failed")}): 1,
        frozenset({("outcome", "passed")}): 0,
    }
    assert found["lakeloop_validation_failed_expectations"] == {frozenset(): 2}


def test_the_trigger_kinds_are_the_registrys() -> None:
    assert pushmetrics.TRAINING_TRIGGERS == registry.TRIGGER_KINDS


def test_seeding_without_a_pushgateway_is_a_no_op(tmp_path: Path) -> None:
    assert not pushmetrics.seed_counters(None, dataset="d", model_name="m")
    assert not pushmetrics.seed_counters(
        f"http://127.0.0.1:{free_port()}", dataset="d", model_name="m"
    )
