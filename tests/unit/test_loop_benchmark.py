"""The loop benchmark's hop arithmetic (``benchmarks.loop``): recorded timestamps in, seconds per
hop out, always adding up to the wait the user saw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from benchmarks.loop import BETWEEN_STEPS, TO_SERVED, Span, Timeline, hops, middle, summarize

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_each_hop_ends_where_the_next_begins_and_they_add_up_to_the_wait() -> None:
    timeline = Timeline(
        start=START,
        served=at(20),
        marks=[("event", at(0.5)), ("trigger", at(1.5)), ("imports", at(6))],
        steps=[
            Span("validate", at(6.5), at(9)),
            Span("fit", at(9), at(10)),
            Span("swap", at(12), at(25)),  # still running when the API served: counted until then
            Span("report", at(26), at(27)),  # after the API served: not part of the wait
        ],
    )

    found = hops(timeline)

    assert list(found) == ["event", "trigger", "imports", BETWEEN_STEPS, "validate", "fit", "swap"]
    assert found["event"] == pytest.approx(0.5)
    assert found["imports"] == pytest.approx(4.5)
    assert found[BETWEEN_STEPS] == pytest.approx(0.5 + 2)
    assert found["swap"] == pytest.approx(8)
    assert sum(found.values()) == pytest.approx(20)


def test_what_follows_the_last_step_until_served_is_its_own_hop() -> None:
    timeline = Timeline(
        start=START, served=at(10), marks=[("event", at(1))], steps=[Span("gate", at(2), at(4))]
    )

    found = hops(timeline)

    assert found[TO_SERVED] == pytest.approx(6)
    assert sum(found.values()) == pytest.approx(10)


def test_a_clock_behind_the_hop_before_counts_no_time_and_the_total_holds() -> None:
    # The event reached Prefect before the merge call returned to the client.
    timeline = Timeline(
        start=START,
        served=at(5),
        marks=[("event", at(-0.2)), ("trigger", at(1))],
        steps=[Span("fit", at(0.9), at(3))],
    )

    found = hops(timeline)

    assert found["event"] == 0
    assert found["trigger"] == pytest.approx(1)
    assert found["fit"] == pytest.approx(2)
    assert sum(found.values()) == pytest.approx(5)


def test_a_step_run_twice_is_one_hop_with_both_times() -> None:
    # The retrain's own steps, then its training subflow's: the same labels may come back.
    timeline = Timeline(
        start=START,
        served=at(10),
        steps=[Span("read", at(0), at(1)), Span("fit", at(1), at(3)), Span("read", at(3), at(4))],
    )

    assert hops(timeline)["read"] == pytest.approx(2)


def test_summary_is_the_median_per_hop_with_a_missing_hop_as_zero_in_first_seen_order() -> None:
    runs = [
        {"event": 1.0, "fit": 3.0},
        {"event": 2.0, "fit": 5.0, "retry": 9.0},
        {"event": 30.0, "fit": 4.0},
    ]

    assert summarize(runs) == [("event", 2.0), ("fit", 4.0), ("retry", 0.0)]


def test_the_floor_is_taken_on_the_run_whose_total_is_the_median() -> None:
    runs = [{"fit": 9.0, "log": 1.0}, {"fit": 1.0}, {"fit": 2.0, "log": 2.0}]

    assert middle(runs) == 2
