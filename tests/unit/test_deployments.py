"""Deployments are declared twice (serve() for the laptop, prefect.yaml for a team server):
they must not drift apart."""

from __future__ import annotations

import ast
import copyreg
import inspect
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import yaml
from prefect import Flow
from prefect.utilities.callables import parameter_schema

from deployments.serve import TRAINING_EVENTS, declared, training_trigger
from deployments.warm import PRELOADED, forked_flow_runs
from flows.train import train_on_commit
from lakeloop import registry
from lakeloop.events import ALERT_FIRED, DRIFT_DETECTED
from lakeloop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict[str, Any]:
    project: dict[str, Any] = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return project


def test_prefect_yaml_declares_exactly_the_served_deployments(settings: Settings) -> None:
    in_yaml = {d["name"]: d for d in _project()["deployments"]}
    served = {d.name: d for d in declared(settings)}
    assert set(in_yaml) == set(served)
    for name, deployment in served.items():
        written = in_yaml[name]
        assert written["entrypoint"] == deployment.entrypoint
        assert written["description"] == deployment.description
        module, function = deployment.entrypoint.split(":")
        assert deployment.flow.fn.__name__ == function
        assert deployment.flow.fn.__module__ == module.removesuffix(".py").replace("/", ".")
        triggers = written.get("triggers", [])
        assert len(triggers) == len(deployment.triggers)
        for declared_trigger, served_trigger in zip(triggers, deployment.triggers, strict=True):
            assert declared_trigger["name"] == served_trigger.name
            assert set(declared_trigger["expect"]) == set(served_trigger.expect)
            assert declared_trigger["match"] == served_trigger.match.model_dump()
            assert declared_trigger["parameters"] == served_trigger.parameters
        intervals = [s["interval"] for s in written.get("schedules", [])]
        expected = [] if deployment.interval is None else [deployment.interval.total_seconds()]
        assert intervals == expected


def test_every_yaml_deployment_runs_on_the_pool_chosen_at_deploy_time() -> None:
    # `prefect deploy --pool` is ignored when the file names a pool: LAKELOOP_WORK_POOL names it.
    for written in _project()["deployments"]:
        assert written["work_pool"]["name"] == "{{ $LAKELOOP_WORK_POOL }}", written["name"]


def test_triggered_parameters_are_parameters_of_the_flow(settings: Settings) -> None:
    """A templated parameter the flow does not take would fail every triggered run."""
    for deployment in declared(settings):
        accepted = set(parameter_schema(deployment.flow.fn).properties)
        for trigger in deployment.triggers:
            assert set(trigger.parameters or {}) <= accepted, deployment.name


def test_training_trigger_follows_the_configured_repository_and_branch(
    settings: Settings,
) -> None:
    moved = settings.model_copy(
        update={"lakefs": settings.lakefs.model_copy(update={"repository": "r2", "branch": "b"})}
    )
    trigger = training_trigger(moved)
    assert set(trigger.expect) == set(TRAINING_EVENTS)
    assert trigger.match.model_dump() == {
        "prefect.resource.id": "lakefs.repository.r2",
        "lakefs.branch": "b",
    }


def test_drift_retrains_the_configured_model(settings: Settings) -> None:
    [retrain] = [d for d in declared(settings) if d.name == "retrain-on-drift"]
    drift, alert = retrain.triggers
    model = f"lakeloop.model.{settings.mlflow.model_name}"
    assert set(drift.expect) == {DRIFT_DETECTED}
    assert drift.match.model_dump() == {"prefect.resource.id": model}
    # Only alerts labelled for it retrain; any other alert is a notification.
    assert set(alert.expect) == {ALERT_FIRED}
    assert alert.match.model_dump() == {
        "prefect.resource.id": model,
        "lakeloop.alert.action": "retrain",
    }


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        *((event, "commit") for event in TRAINING_EVENTS),
        (DRIFT_DETECTED, "drift"),
        (ALERT_FIRED, "alert"),
        ("reconcile", "reconcile"),
        ("manual", "manual"),
    ],
)
def test_each_trigger_is_recorded_as_its_kind(reason: str, kind: str) -> None:
    """The lineage tag says why a model was trained, for every way a training starts."""
    assert registry.trigger_kind(reason) == kind
    assert kind in registry.TRIGGER_KINDS


@pytest.mark.parametrize(
    ("repository", "commit_id"),
    [("housing", "../../etc"), ("housing", "a" * 63), ("../housing", "a" * 64), ("housing", "")],
)
def test_training_refuses_ids_lakefs_would_never_make(repository: str, commit_id: str) -> None:
    """A hand-started run cannot aim the flow's folders outside the state folder."""
    with pytest.raises(ValueError, match="not a lakeFS repository and commit id"):
        train_on_commit.fn(repository, commit_id)


EXAMPLE_PARAMETERS = {
    "train-on-commit": {"repository": "housing", "commit_id": "c0ffee"},
    "retrain-on-drift": {
        "champion_version": "3",
        "window_id": "w",
        "window_start": "2026-11-30T10:00:00+00:00",
        "window_end": "2026-11-30T11:00:00+00:00",
    },
    "reconcile-commits": {"mode": "newest", "depth": 5},
    "monitor-champion": {"window_rows": 500},
}


def test_every_flow_reaches_its_forked_run_able_to_validate_its_parameters(
    settings: Settings,
) -> None:
    """A forked run gets its flow pickled by the runner. By value, a flow function lost what its
    postponed annotations name (``datetime``, a ``Literal`` alias): every drift retrain and
    reconcile run failed Prefect's parameter validation while training runs passed."""
    deployments = declared(settings)
    assert {deployment.name for deployment in deployments} == set(EXAMPLE_PARAMETERS)
    with forked_flow_runs(preload=()):
        for deployment in deployments:
            travelled = cloudpickle.loads(cloudpickle.dumps(deployment.flow))
            assert travelled is deployment.flow  # by reference: the module's own flow
            checked = travelled.validate_parameters(EXAMPLE_PARAMETERS[deployment.name])
            assert set(checked) >= set(EXAMPLE_PARAMETERS[deployment.name])
    assert Flow not in copyreg.dispatch_table  # only while the flow server serves


def test_the_warm_parent_imports_every_module_a_flow_imports_when_it_runs(
    settings: Settings,
) -> None:
    """The flows import their pipelines inside their bodies (flows/__init__.py); a pipeline the
    warm parent did not import is imported again by every run (4 s between steps, measured)."""
    imported_in_runs = set()
    for deployment in declared(settings):
        tree = ast.parse(inspect.getsource(deployment.flow.fn))
        imported_in_runs |= {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "pipelines"
            for alias in node.names
        }
    imported_in_runs.discard("pipelines")
    assert imported_in_runs == {
        "pipelines.train",
        "pipelines.retrain",
        "pipelines.monitor",
        "pipelines.reconcile",
    }
    assert imported_in_runs <= set(PRELOADED)
