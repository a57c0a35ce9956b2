"""The Dockerfile, read by a Dockerfile parser: a slim final stage that runs as a non-root user
and checks its own health; built for real when a Docker daemon is reachable."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages() -> list[list[dict[str, str]]]:
    """The instructions of each build stage, comments left out."""
    parsed = DockerfileParser(str(ROOT / "Dockerfile"))
    found: list[list[dict[str, str]]] = []
    for instruction in parsed.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def _values(stage: list[dict[str, str]], name: str) -> list[str]:
    return [instruction["value"] for instruction in stage if instruction["instruction"] == name]


def test_build_and_runtime_are_separate_stages(stages: list[list[dict[str, str]]]) -> None:
    assert len(stages) == 2
    runtime = stages[-1]
    assert _values(runtime, "FROM")[0].endswith("AS runtime")
    # Only the built virtualenv crosses over: no compiler, no sources of the build stage.
    copied = [value for value in _values(runtime, "COPY") if value.startswith("--from")]
    assert copied == ["--from=build /opt/venv /opt/venv"]


def test_the_final_stage_runs_as_a_numeric_non_root_user(
    stages: list[list[dict[str, str]]],
) -> None:
    [user] = _values(stages[-1], "USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "Kubernetes' runAsNonRoot can only verify a numeric uid"
    assert int(uid) != 0


def test_the_image_checks_its_health_and_serves_the_api_by_default(
    stages: list[list[dict[str, str]]],
) -> None:
    runtime = stages[-1]
    [healthcheck] = _values(runtime, "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert _values(runtime, "CMD") == ['["python", "-m", "api"]']


def test_what_the_image_copies_is_there_and_secrets_are_ignored() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", "**/.env", ".lakeloop", ".venv", ".git", "tests"} <= set(ignored)
    for needed in ("pyproject.toml", "README.md", "prefect.yaml", "flows"):
        assert (ROOT / needed).exists()
        assert needed not in ignored


def test_the_image_builds_when_a_docker_daemon_is_reachable() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client: the image build is not tested here")
    daemon = subprocess.run([docker, "info"], capture_output=True, text=True, check=False)
    if daemon.returncode != 0:
        pytest.skip("no reachable Docker daemon (`docker info` fails): image build not tested")
    built = subprocess.run(
        [docker, "build", "--tag", "lakeloop:test", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    user = subprocess.run(
        [docker, "run", "--rm", "lakeloop:test", "id", "-u"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert user.stdout.strip() == "10001"


def test_the_image_names_the_commit_and_version_it_was_built_from(
    stages: list[list[dict[str, str]]],
) -> None:
    runtime = stages[-1]
    args = dict(value.split("=", 1) for value in _values(runtime, "ARG"))
    # A local build says it does not know the commit; release.yml passes it (test_ci_cd.py).
    assert args["VCS_REF"] == "unknown"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert args["VERSION"] == version
    [labels] = _values(runtime, "LABEL")
    assert 'org.opencontainers.image.revision="${VCS_REF}"' in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    # Last, so that a new commit rebuilds only the metadata.
    assert [i["instruction"] for i in runtime[-3:]] == ["ARG", "ARG", "LABEL"]
