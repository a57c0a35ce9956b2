"""Deployments are declared twice (serve() for the laptop, prefect.yaml for a team server):
they must not drift apart."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployments.serve import TRAINING_EVENTS, training_trigger
from lakeloop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_trigger_matches_the_served_one(settings: Settings) -> None:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [deployment] = [d for d in project["deployments"] if d["name"] == "train-on-commit"]
    [declared] = deployment["triggers"]
    served = training_trigger(settings)
    assert set(declared["expect"]) == set(TRAINING_EVENTS) == set(served.expect)
    assert declared["match"] == served.match.model_dump()
    assert declared["parameters"] == served.parameters
    assert deployment["entrypoint"] == "flows/train.py:train_on_commit"


def test_trigger_templates_the_flow_parameters(settings: Settings) -> None:
    trigger = training_trigger(settings)
    assert trigger.parameters is not None
    assert set(trigger.parameters) == {"repository", "commit_id", "reason"}
    assert "commit_id" in trigger.parameters["commit_id"]
