"""The Prefect Cloud webhook template turns a lakeFS webhook body into the event the gateway
emits, so the same deployment trigger fires on either path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from prefect.events.schemas.events import Resource, ResourceSpecification

from deployments.serve import TRAINING_EVENTS, training_trigger
from lakeloop import events
from lakeloop.settings import Settings

TEMPLATE = (
    Path(__file__).resolve().parents[2] / "infra" / "prefect-cloud" / "lakefs-webhook-template.json"
)


def _hook(**overrides: Any) -> events.LakeFSWebhook:
    fields: dict[str, Any] = {
        "event_type": "post-merge",
        "event_time": "2026-11-23T10:00:00Z",
        "action_name": "lakeloop-train-trigger",
        "hook_id": "prefect_cloud_webhook",
        "repository_id": "housing",
        "branch_id": "main",
        "source_ref": "ingest-batch-1",
        "commit_id": "c0ffee" * 10,
        "commit_message": "merge ingest-batch-1",
        "committer": "lakeloop",
        "commit_metadata": {"rows": "5000"},
    } | overrides
    return events.LakeFSWebhook(**fields)


def _render(hook: events.LakeFSWebhook) -> dict[str, Any]:
    """As Prefect Cloud does: Jinja in a sandbox over the parsed JSON body, then JSON."""
    body = json.loads(msgspec.json.encode(hook))
    template = ImmutableSandboxedEnvironment().from_string(TEMPLATE.read_text())
    rendered: dict[str, Any] = json.loads(template.render(body=body))
    return rendered


@pytest.mark.parametrize("event_type", ["post-commit", "post-merge"])
def test_the_template_makes_the_gateways_event(event_type: str) -> None:
    hook = _hook(event_type=event_type)
    relayed = events.lakefs_event(hook)
    rendered = _render(hook)
    assert rendered["event"] == relayed["event"]
    assert rendered["resource"] == relayed["resource"]
    assert rendered["payload"] == relayed["payload"]
    assert rendered["occurred"] == relayed["occurred"]


def test_the_deployment_trigger_matches_the_rendered_event(settings: Settings) -> None:
    rendered = _render(_hook())
    trigger = training_trigger(settings)
    assert rendered["event"] in trigger.expect
    assert isinstance(trigger.match, ResourceSpecification)
    assert trigger.match.matches(Resource(rendered["resource"]))
    assert rendered["payload"]["repository_id"] == settings.lakefs.repository


def test_a_commit_marked_skip_training_makes_an_event_no_trigger_expects() -> None:
    rendered = _render(_hook(commit_metadata={events.SKIP_TRAINING_KEY: "True"}))
    assert rendered["event"] == "lakefs.post-merge.skipped"
    assert rendered["event"] not in TRAINING_EVENTS
