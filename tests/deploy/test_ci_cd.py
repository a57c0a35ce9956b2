"""From pull request to production: the GitHub workflows and the Flux manifests, checked here
without a CI host or a cluster.

The workflows are validated against GitHub's workflow schema (vendored by check-jsonschema) and
audited by zizmor, offline; the test job must call exactly the make targets `.ci/run` calls. The
Flux objects are validated against Flux's CRD schemas (npm's @kubernetes-models/flux-cd, run by
Node.js), and Flux's image automation is followed through: the tags release.yml publishes are the
ones the image policy picks, and the fields it rewrites give every container of infra/k8s, the
flow runs' image included, the new image.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FLUX = ROOT / "infra" / "flux"
K8S = ROOT / "infra" / "k8s"
NODE_CHECKS = Path(__file__).resolve().parent / "node"
BIN = Path(sys.executable).parent


def _workflow(name: str) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


def _flux_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(FLUX.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _one(kind: str) -> dict[str, Any]:
    [found] = [doc for doc in _flux_objects() if doc["kind"] == kind]
    return found


def _steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(f"{action}@")]


def _schema_problems(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def _zizmor(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", "--format", "plain", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


# ---- the workflows ----


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflow_matches_githubs_schema(name: str) -> None:
    checked = _schema_problems(WORKFLOWS / name)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = (WORKFLOWS / "ci.yml").read_text().replace("runs-on:", "run-on:", 1)
    (tmp_path / "ci.yml").write_text(broken)
    assert _schema_problems(tmp_path / "ci.yml").returncode != 0


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    audited = _zizmor(WORKFLOWS)
    assert audited.returncode == 0, audited.stdout + audited.stderr


def test_zizmor_catches_a_pull_request_title_in_a_script(tmp_path: Path) -> None:
    text = (WORKFLOWS / "ci.yml").read_text()
    injected = "      - run: echo ${{ github.event.pull_request.title }}\n"
    (tmp_path / "ci.yml").write_text(text.replace("      - run: make test\n", injected, 1))
    audited = _zizmor(tmp_path / "ci.yml")
    assert audited.returncode != 0
    assert "template-injection" in audited.stdout


def test_ci_runs_on_every_pull_request_and_push_to_main() -> None:
    triggers = _workflow("ci.yml")[True]  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]


def test_the_ci_job_runs_exactly_the_make_targets_of_ci_run() -> None:
    script = [
        shlex.split(line)
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.startswith("make ")
    ]
    job = _workflow("ci.yml")["jobs"]["test"]
    workflow = [shlex.split(step["run"]) for step in job["steps"] if "make " in step.get("run", "")]
    assert workflow == script
    assert [argv[1] for argv in workflow] == ["system-deps", "lint", "test"]


def test_the_ci_job_has_the_test_tables_beside_the_code_and_a_real_postgres() -> None:
    job = _workflow("ci.yml")["jobs"]["test"]
    checkouts = {step["with"]["path"]: step["with"] for step in _steps(job, "actions/checkout")}
    # tests/utils/real_data.py reads ../shared/datasets from the checkout.
    assert set(checkouts) == {"lakeloop", "shared"}
    assert checkouts["shared"]["repository"] == "${{ vars.LAKELOOP_TEST_DATA_REPOSITORY }}"
    assert job["defaults"]["run"]["working-directory"] == "lakeloop"
    # The Makefile's default points at 127.0.0.1; in a container job the service is `postgres`.
    assert job["env"]["LAKELOOP_TEST_POSTGRES_URL"].startswith("postgresql://postgres@postgres:")
    assert "postgres" in job["services"]
    [report] = _steps(job, "actions/upload-artifact")
    assert report["if"] == "always()"
    assert "junitxml" in job["env"]["PYTEST_ADDOPTS"]


def test_release_publishes_only_from_main_and_version_tags() -> None:
    release = _workflow("release.yml")
    push = release[True]["push"]
    assert list(release[True]) == ["push"]
    assert (push["branches"], push["tags"]) == (["main"], ["v*"])
    # Only the publishing job may write packages; the workflow's default is read-only.
    assert release["permissions"] == {"contents": "read"}
    [job] = release["jobs"].values()
    assert job["permissions"]["packages"] == "write"
    [build] = _steps(job, "docker/build-push-action")
    assert build["with"]["push"] is True
    assert build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    build_args = dict(line.split("=", 1) for line in build["with"]["build-args"].splitlines())
    assert build_args["VCS_REF"] == "${{ github.sha }}"
    # No build cache a pull request could have written.
    assert "cache-from" not in build["with"]


# ---- GitOps ----


def _release_main_tag() -> str:
    [job] = _workflow("release.yml")["jobs"].values()
    [meta] = _steps(job, "docker/metadata-action")
    [template] = [line for line in meta["with"]["tags"].splitlines() if "is_default_branch" in line]
    return template.split("value=", 1)[1].split(",", 1)[0]


def test_the_image_policy_picks_main_builds_by_commit_time() -> None:
    policy = _one("ImagePolicy")["spec"]
    pattern = re.compile(policy["filterTags"]["pattern"])
    # metadata-action renders {{sha}} as the short commit and {{commit_date 'X'}} in Unix seconds.
    rendered = (
        _release_main_tag()
        .replace("{{sha}}", "3d3c42e")
        .replace("{{commit_date 'X'}}", "1764518400")
    )
    match = pattern.match(rendered)
    assert match is not None, f"{rendered} is not picked by {pattern.pattern}"
    assert policy["filterTags"]["extract"] == "$ts"
    assert match["ts"] == "1764518400"
    assert policy["policy"] == {"numerical": {"order": "asc"}}
    # Release tags and commit tags are not main builds.
    for other in ["1.2.3", "1.2", "sha-3d3c42e5aac5ba805825da76410c181273ba90b1"]:
        assert pattern.match(other) is None


def test_the_image_repository_is_the_registry_release_publishes_to() -> None:
    image = _one("ImageRepository")["spec"]["image"]
    release = _workflow("release.yml")
    assert release["env"]["REGISTRY"] == "${{ vars.IMAGE_REGISTRY || 'ghcr.io' }}"
    assert release["env"]["IMAGE_NAME"] == "${{ vars.IMAGE_NAME || github.repository }}"
    assert image == "ghcr.io/OWNER/REPO"  # the default of both, to fill in (docs/deploy.md)


def test_flux_applies_infra_k8s_and_writes_images_back_there() -> None:
    kustomization = _one("Kustomization")["spec"]
    automation = _one("ImageUpdateAutomation")["spec"]
    assert kustomization["path"] == automation["update"]["path"] == "./infra/k8s"
    assert (ROOT / kustomization["path"]).is_dir()
    assert kustomization["prune"] is True
    assert automation["update"]["strategy"] == "Setters"
    assert automation["git"]["push"]["branch"] == "main"
    # Both follow the repository `flux bootstrap` makes.
    assert kustomization["sourceRef"] == automation["sourceRef"]
    assert kustomization["sourceRef"] == {"kind": "GitRepository", "name": "flux-system"}


def test_the_setter_markers_name_the_image_policy() -> None:
    policy = _one("ImagePolicy")["metadata"]
    marked = re.findall(r'\{"\$imagepolicy": "([^"]+)"\}', (K8S / "kustomization.yaml").read_text())
    name = f"{policy['namespace']}:{policy['name']}"
    assert sorted(marked) == [f"{name}:name", f"{name}:tag"]


def _as_flux_sets(text: str, image: str, tag: str) -> str:
    """``text`` with each marked field set as Flux's Setters strategy sets it."""
    values = {"name": image, "tag": tag}

    def replace(line: str) -> str:
        found = re.match(r'^(\s*[\w]+: )\S+(\s*# \{"\$imagepolicy": "[^"]+:(name|tag)"\})$', line)
        return f"{found[1]}{values[found[3]]}{found[2]}" if found else line

    return "\n".join(replace(line) for line in text.splitlines()) + "\n"


def test_a_new_image_reaches_every_container_and_the_flow_runs(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize rendering not checked")
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "kustomization.yaml"
    kustomization.write_text(
        _as_flux_sets(kustomization.read_text(), "ghcr.io/acme/lakeloop", "main-3d3c42e-1764518400")
    )
    built = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    new = "ghcr.io/acme/lakeloop:main-3d3c42e-1764518400"
    pods = [
        doc["spec"]["template"]["spec"]
        for doc in yaml.safe_load_all(built)
        if doc and doc["kind"] == "Deployment"
    ]
    containers = [c for pod in pods for c in pod["containers"] + pod.get("initContainers", [])]
    assert {c["name"] for c in containers} >= {"api", "gateway", "worker", "declare-flows"}
    assert {c["image"] for c in containers} == {new}
    # The flow-run Jobs take the image of the deployments the worker declares.
    [declare] = [c for c in containers if c["name"] == "declare-flows"]
    env = {item["name"]: item.get("value") for item in declare["env"]}
    assert env["LAKELOOP_IMAGE"] == new


def test_the_worker_declares_the_flows_on_the_pool_it_polls() -> None:
    [worker] = [
        doc
        for doc in yaml.safe_load_all((K8S / "worker.yaml").read_text())
        if doc and doc["kind"] == "Deployment"
    ]
    pod = worker["spec"]["template"]["spec"]
    [declare] = pod["initContainers"]
    [poller] = pod["containers"]
    # The same command tests/deploy/test_prefect_deploy.py runs against a real Prefect server.
    assert declare["command"] == ["prefect", "--no-prompt", "deploy", "--all"]
    env = {item["name"]: item.get("value") for item in declare["env"]}
    assert f"--pool={env['LAKELOOP_WORK_POOL']}" in poller["command"]


def test_flux_objects_match_fluxs_schemas() -> None:
    assert _validate_flux(_flux_objects()) == []


def test_the_flux_schema_check_refuses_a_wrong_policy() -> None:
    objects = _flux_objects()
    [policy] = [doc for doc in objects if doc["kind"] == "ImagePolicy"]
    policy["spec"]["policy"]["numerical"]["order"] = "newest"
    [problem] = _validate_flux(objects)
    assert problem.startswith("ImagePolicy lakeloop")
    assert "order" in problem


def _validate_flux(objects: list[dict[str, Any]]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: Flux's schemas are not checked")
    if not (NODE_CHECKS / "node_modules" / "@kubernetes-models" / "flux-cd").is_dir():
        pytest.fail(f"Flux's schemas are not installed in {NODE_CHECKS}: run `make install`")
    checked = subprocess.run(
        [node, str(NODE_CHECKS / "validate_flux.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=True,
        cwd=NODE_CHECKS,
    )
    problems: list[str] = json.loads(checked.stdout)
    return problems


def test_the_flux_folder_builds_as_flux_builds_it(tmp_path: Path) -> None:
    """kustomize-controller builds a path with no kustomization.yaml from every manifest in it
    (so `flux bootstrap`'s own flux-system/ folder joins them): the same, by kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize rendering not checked")
    assert not (FLUX / "kustomization.yaml").exists()
    names = [path.name for path in sorted(FLUX.glob("*.yaml"))]
    for name in names:
        shutil.copy(FLUX / name, tmp_path / name)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": names}))
    built = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built) if doc)
    assert kinds == ["ImagePolicy", "ImageRepository", "ImageUpdateAutomation", "Kustomization"]


def test_flux_commits_build_no_image() -> None:
    """Flux's image automation commits a new tag to main; a build of that commit would give Flux
    a newer tag of the same code, and so on for ever. The file it writes is the only one it
    changes, and a push changing only ignored files runs neither workflow."""
    written = ROOT / _one("ImageUpdateAutomation")["spec"]["update"]["path"] / "kustomization.yaml"
    assert written.resolve() == (K8S / "kustomization.yaml").resolve()
    ignored = str(written.resolve().relative_to(ROOT))
    for name in ["release.yml", "ci.yml"]:
        assert ignored in _workflow(name)[True]["push"]["paths-ignore"], name
    # Pull requests are never filtered: the required check always runs.
    assert _workflow("ci.yml")[True]["pull_request"] is None
