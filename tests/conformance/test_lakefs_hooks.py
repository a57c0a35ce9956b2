"""lakeFS actions as lakeFS runs them: error texts, hook output, payload fields, which failures
abort with 412 and which with 500, and what an action file may hold that a run does not use.

Each test runs against the local server and, when configured, a real lakeFS (see conftest.py);
the texts asserted are the ones lakeFS's pkg/actions, pkg/graveler and pkg/api write.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import lakefs
import pytest
from lakefs.exceptions import NotFoundException, ServerException

from lakefs_local.testing import WebhookReceiver
from tests.conformance.conftest import LakeFSTarget

REJECTION = b"rejected: price_range out of bounds"
"""What a failing webhook answers: lakeFS keeps it in the hook's output, never in the error."""


@pytest.fixture
def second_receiver(lakefs_target: LakeFSTarget) -> Iterator[WebhookReceiver]:
    """Another webhook endpoint, for actions whose hooks must answer differently."""
    assert lakefs_target.webhook_host is not None  # the `receiver` fixture skipped otherwise
    hook_receiver = WebhookReceiver(lakefs_target.webhook_host)
    yield hook_receiver
    hook_receiver.close()


def _install_actions(repository: lakefs.Repository, files: dict[str, str]) -> None:
    """Commit action files to main in one commit."""
    main = repository.branch("main")
    for name, body in files.items():
        main.object(f"_lakefs_actions/{name}.yaml").upload(data=body, mode="w")
    main.commit(message=f"install {', '.join(files)}")


def _ingest_branch(repository: lakefs.Repository) -> lakefs.Branch:
    """A branch with a staged change, ready to commit (actions here filter on ``ingest``)."""
    ingest = repository.branch("ingest").create(source_reference="main")
    ingest.object("data/batch.csv").upload(data=b"rows", mode="wb")
    return ingest


def _webhook_action(name: str, event: str, url: str, *, extra: str = "") -> str:
    """An action with one webhook, ``check``, on ``event`` for ``ingest``; ``extra`` is more
    YAML for its properties."""
    return f"""
name: {name}
on:
  {event}:
    branches: [ingest]
hooks:
  - id: check
    type: webhook
    properties:
      url: {url}
{extra}"""


def _commit_refused(branch: lakefs.Branch) -> ServerException:
    """The error of a commit the hooks refuse (412 or 500 alike)."""
    with pytest.raises(ServerException) as caught:
        branch.commit(message="batch")
    return caught.value


def _only_run(lakefs_target: LakeFSTarget, repository: lakefs.Repository) -> str:
    """The id of the one action run recorded for ``ingest``."""
    runs = lakefs_target.client().sdk_client.actions_api.list_repository_runs(
        repository.id, branch="ingest"
    )
    assert len(runs.results) == 1
    return str(runs.results[0].run_id)


# -- 1. a failing hook's error -----------------------------------------------------------------


def test_failing_webhook_error_is_lakefs_text_without_the_body(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    receiver.status, receiver.reply = 400, REJECTION
    _install_actions(repo, {"gate": _webhook_action("gate", "pre-commit", f"{receiver.url}/v")})
    ingest = _ingest_branch(repo)

    refused = _commit_refused(ingest)

    assert refused.status_code == 412
    run_id = _only_run(lakefs_target, repo)
    # graveler HookAbortError around go-multierror around service.go's and webhook.go's texts.
    assert refused.body["message"] == (
        f"pre-commit hook aborted, run id '{run_id}': 1 error occurred:\n"
        "\t* hook run id '0000_0000' failed on action 'gate' hook 'check': "
        "action failed: webhook request failed (status code: 400)\n\n"
    )
    assert REJECTION.decode() not in refused.body["message"]


def test_webhook_timeout_error_is_go_clients_text(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.url}/slow"
    action = _webhook_action("gate", "pre-commit", url, extra="      timeout: 500ms\n")
    _install_actions(repo, {"gate": action})
    ingest = _ingest_branch(repo)

    receiver.answering.clear()  # no answer until the commit has been refused
    try:
        refused = _commit_refused(ingest)
    finally:
        receiver.answering.set()

    assert refused.status_code == 412  # the hook ran and failed: ErrActionFailed
    assert refused.body["message"].endswith(
        f"hook 'check': action failed: Post \"{url}\": context deadline exceeded "
        "(Client.Timeout exceeded while awaiting headers)\n\n"
    )


# -- 2. a hook's output ------------------------------------------------------------------------


def test_hook_output_holds_request_and_response_dump(
    lakefs_target: LakeFSTarget,
    repo: lakefs.Repository,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver.status, receiver.reply = 400, REJECTION
    secret_header = ""
    if lakefs_target.is_local:  # a real lakeFS reads its own environment, out of our reach
        monkeypatch.setenv("LAKEFSACTION_CONFORMANCE_TOKEN", "s3cr3t-token")
        secret_header = '        X-Token: "{{ ENV.LAKEFSACTION_CONFORMANCE_TOKEN }}"\n'
    url = f"{receiver.url}/validate"
    extra = "      query_params:\n        source: lakefs\n"
    extra += "      headers:\n        X-Origin: lakeloop\n" + secret_header
    _install_actions(repo, {"gate": _webhook_action("gate", "pre-commit", url, extra=extra)})
    ingest = _ingest_branch(repo)
    assert _commit_refused(ingest).status_code == 412

    actions_api = lakefs_target.client().sdk_client.actions_api
    run_id = _only_run(lakefs_target, repo)
    hooks = actions_api.list_run_hooks(repo.id, run_id).results
    assert [(h.hook_run_id, h.action, h.hook_id, h.status) for h in hooks] == [
        ("0000_0000", "gate", "check", "failed")
    ]
    output = bytes(actions_api.get_run_hook_output(repo.id, run_id, "0000_0000")).decode()

    request, _, rest = output.partition("\nRequest duration: ")
    assert request.startswith(f"Request:\nPOST {url}\nQuery Params:\nsource: lakefs\nHeaders:\n")
    headers, _, body = request.partition("Headers:\n")[2].partition("Request Body:\n")
    assert set(headers.splitlines()) >= {"X-Origin: lakeloop", "Content-Type: application/json"}
    if secret_header:
        assert "X-Token: *******" in headers.splitlines()
        assert "s3cr3t-token" not in output
    assert body.endswith("\n\n")
    assert json.loads(body) == receiver.calls[0]["json"]  # the bytes that were POSTed
    duration, _, response = rest.partition("\n\nResponse:\n")
    assert re.fullmatch(r"[0-9.]+(ns|µs|ms|s)", duration)  # Go's time.Duration text
    status_line, _, after_status = response.partition("\r\n")
    assert re.fullmatch(r"HTTP/1\.[01] 400 Bad Request", status_line)
    response_headers, _, response_body = after_status.partition("\r\n\r\n")
    assert f"Content-Length: {len(REJECTION)}" in response_headers.split("\r\n")
    assert response_body == (
        REJECTION.decode() + "Error: action failed: webhook request failed (status code: 400)\n"
    )


# -- 3. the payload ----------------------------------------------------------------------------


def test_commit_payloads_omit_empty_fields(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    _install_actions(
        repo,
        {
            "before": _webhook_action("before", "pre-commit", f"{receiver.url}/pre"),
            "after": _webhook_action("after", "post-commit", f"{receiver.url}/post"),
        },
    )
    ingest = _ingest_branch(repo)
    with_metadata = ingest.commit(message="with metadata", metadata={"rows": "1"}).id
    receiver.wait_for(2)
    ingest.object("data/more.csv").upload(data=b"more", mode="wb")
    without_metadata = ingest.commit(message="without metadata").id
    calls = receiver.wait_for(4)

    payloads = {(c["json"]["event_type"], c["json"]["commit_message"]): c["json"] for c in calls}
    common = {"event_type", "event_time", "action_name", "hook_id", "repository_id", "branch_id"}
    common |= {"source_ref", "commit_message", "committer"}
    pre = payloads["pre-commit", "with metadata"]
    assert set(pre) == common | {"commit_metadata"}  # no commit id before the commit exists
    assert (pre["source_ref"], pre["commit_metadata"]) == ("ingest", {"rows": "1"})
    post = payloads["post-commit", "with metadata"]
    assert set(post) == common | {"commit_metadata", "commit_id"}
    assert post["commit_id"] == post["source_ref"] == with_metadata
    assert set(payloads["pre-commit", "without metadata"]) == common  # empty metadata: omitted
    post_bare = payloads["post-commit", "without metadata"]
    assert set(post_bare) == common | {"commit_id"}
    assert post_bare["commit_id"] == without_metadata


# -- 4. actions that cannot be built or loaded: 500 --------------------------------------------


def test_missing_env_var_fails_with_500_before_any_hook_runs(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    missing = f"LAKEFSACTION_CONFORMANCE_MISSING_{uuid.uuid4().hex[:8].upper()}"
    extra = f'      headers:\n        Authorization: "Bearer {{{{ ENV.{missing} }}}}"\n'
    _install_actions(
        repo, {"gate": _webhook_action("gate", "pre-commit", receiver.url, extra=extra)}
    )
    ingest = _ingest_branch(repo)
    head = ingest.get_commit().id

    refused = _commit_refused(ingest)

    # webhook.go NewWebhook fails in service.go allocateTasks: no ErrActionFailed, no run saved.
    assert refused.status_code == 500
    assert re.fullmatch(
        r"pre-commit hook aborted, run id '\w+': extracting headers: reading header: "
        f"{missing} not found: missing env var",
        refused.body["message"],
    )
    assert receiver.calls == []
    assert ingest.get_commit().id == head
    runs = lakefs_target.client().sdk_client.actions_api.list_repository_runs(repo.id)
    assert [r.event_type for r in runs.results if r.branch == "ingest"] == []


def test_unknown_hook_type_fails_every_event_with_500(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    _install_actions(repo, {"gate": _webhook_action("gate", "pre-commit", receiver.url)})
    ingest = _ingest_branch(repo)
    # Staged, so this branch's pre-commit reads it; it is for another event and still counts.
    bad_action = """
name: notify chat
on:
  post-create-tag:
hooks:
  - id: notify_slack
    type: slack
    properties:
      channel: data
"""
    ingest.object("_lakefs_actions/bad.yaml").upload(data=bad_action, mode="w")

    refused = _commit_refused(ingest)

    # action.go Validate (it names the hook's id where it means its type), in LoadActions.
    assert refused.status_code == 500
    assert re.fullmatch(
        r"pre-commit hook aborted, run id '\w+': 1 error occurred:\n"
        r"\t\* parsing file _lakefs_actions/bad\.yaml: "
        r"hook\[0\] type 'notify_slack' unknown: invalid action\n\n",
        refused.body["message"],
    )
    assert receiver.calls == []


def test_invalid_action_files_fail_with_500_naming_each(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    _install_actions(repo, {"gate": _webhook_action("gate", "pre-commit", receiver.url)})
    ingest = _ingest_branch(repo)
    nameless = "on:\n  pre-commit:\nhooks: []\n"
    ingest.object("_lakefs_actions/nameless.yaml").upload(data=nameless, mode="w")
    no_url = "name: no url\non:\n  post-merge:\nhooks:\n  - id: notify\n    type: webhook\n"
    ingest.object("_lakefs_actions/no-url.yaml").upload(data=no_url, mode="w")

    refused = _commit_refused(ingest)

    # action.go LoadActions parses every file and lists every failure (go-multierror).
    assert refused.status_code == 500
    message = refused.body["message"]
    assert message.startswith("pre-commit hook aborted, run id '")
    assert "': 2 errors occurred:\n\t* " in message
    assert "* parsing file _lakefs_actions/nameless.yaml: 'name' is required: invalid action\n" in (
        message
    )
    assert (
        "* parsing file _lakefs_actions/no-url.yaml: "
        "hook[0] type 'webhook': missing hook properties: invalid action\n"
    ) in message
    assert receiver.calls == []


def test_folder_under_actions_prefix_fails_with_404(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    _install_actions(repo, {"gate": _webhook_action("gate", "pre-commit", receiver.url)})
    ingest = _ingest_branch(repo)
    ingest.object("_lakefs_actions/archive/old.yaml").upload(data="name: old\n", mode="w")

    with pytest.raises(NotFoundException) as caught:
        ingest.commit(message="batch")

    # actions_source.go lists the folder as an entry, then cannot read it as a file.
    assert re.fullmatch(
        r"pre-commit hook aborted, run id '\w+': 1 error occurred:\n"
        r"\t\* loading file _lakefs_actions/archive/: "
        r"get action file metadata _lakefs_actions/archive/: not found\n\n",
        caught.value.body["message"],
    )
    assert receiver.calls == []


def test_if_that_is_not_boolean_fails_with_500(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    action = _webhook_action("gate", "pre-commit", receiver.url).replace(
        "    type: webhook\n", '    type: webhook\n    if: "1"\n'
    )
    _install_actions(repo, {"gate": action})
    refused = _commit_refused(_ingest_branch(repo))

    # service.go runHookIfEval: ErrIfExprNotBool is not ErrActionFailed, so not 412.
    assert refused.status_code == 500
    run_id = _only_run(lakefs_target, repo)
    assert refused.body["message"] == (
        f"pre-commit hook aborted, run id '{run_id}': 1 error occurred:\n"
        "\t* hook run id '0000_0000' failed on action 'gate' hook 'check': "
        "hook 'if' expression should evaluate to a boolean\n\n"
    )
    assert receiver.calls == []


# -- 5. what an action file may hold that a run does not use -----------------------------------


def test_hooks_for_other_events_do_not_stop_a_webhook(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    lua_action = """
name: tag report
on:
  post-create-tag:
hooks:
  - id: report
    type: lua
    properties:
      script: "local tagged = true"
"""
    airflow_action = """
name: revert audit
on:
  pre-revert:
  post-revert:
hooks:
  - id: audit
    type: airflow
    properties:
      url: http://airflow.invalid
      dag_id: audit
      username: lakefs
      password: not-a-secret
"""
    _install_actions(
        repo,
        {
            "report": lua_action,
            "audit": airflow_action,
            "gate": _webhook_action("gate", "pre-commit", f"{receiver.url}/gate"),
        },
    )
    ingest = _ingest_branch(repo)
    commit_id = ingest.commit(message="batch").id

    assert ingest.get_commit().id == commit_id
    assert [c["path"] for c in receiver.calls] == ["/gate"]


def test_lua_hook_that_is_due_runs_on_lakefs_and_fails_on_the_local_server(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    lua_action = """
name: lua gate
on:
  pre-commit:
    branches: [ingest]
hooks:
  - id: gate
    type: lua
    properties:
      script: "local checked = true"
"""
    _install_actions(repo, {"gate": lua_action})
    ingest = _ingest_branch(repo)
    if not lakefs_target.is_local:
        ingest.commit(message="batch")  # lakeFS runs the script: it passes
        return
    refused = _commit_refused(ingest)
    assert refused.status_code == 412
    assert "hook type 'lua' is not supported by the built-in server" in refused.body["message"]


IF_HOOKS = [
    ("first", ""),
    ("fails", ""),  # the second receiver answers 400
    ("after_failure", ""),  # no `if`: runs only while every hook before it passed
    ("on_failure", "failure()"),
    ("not_success", "!success()"),
    ("on_success", "success()"),
    ("always", "success() || failure()"),
]


def _if_action(passing_url: str, failing_url: str) -> str:
    hook_yaml = "".join(
        f"  - id: {hook_id}\n    type: webhook\n"
        + (f'    if: "{condition}"\n' if condition else "")
        + f"    properties:\n      url: {failing_url if hook_id == 'fails' else passing_url}"
        + f"/{hook_id}\n"
        for hook_id, condition in IF_HOOKS
    )
    return f"name: gate\non:\n  pre-commit:\n    branches: [ingest]\nhooks:\n{hook_yaml}"


def test_if_conditions_choose_which_hooks_run_after_a_failure(
    repo: lakefs.Repository, receiver: WebhookReceiver, second_receiver: WebhookReceiver
) -> None:
    second_receiver.status = 400
    _install_actions(repo, {"gate": _if_action(receiver.url, second_receiver.url)})

    refused = _commit_refused(_ingest_branch(repo))

    assert refused.status_code == 412
    assert "1 error occurred:\n\t* hook run id '0000_0001' failed" in refused.body["message"]
    assert [c["path"] for c in receiver.calls] == [
        "/first",
        "/on_failure",
        "/not_success",
        "/always",
    ]


def test_skipped_hooks_are_listed_as_skipped(
    lakefs_target: LakeFSTarget,
    repo: lakefs.Repository,
    receiver: WebhookReceiver,
    second_receiver: WebhookReceiver,
) -> None:
    second_receiver.status = 400
    _install_actions(repo, {"gate": _if_action(receiver.url, second_receiver.url)})
    assert _commit_refused(_ingest_branch(repo)).status_code == 412

    actions_api = lakefs_target.client().sdk_client.actions_api
    run_id = _only_run(lakefs_target, repo)
    # lakeFS answers "skipped", which its own OpenAPI enum (and so the SDK's model) lacks: read
    # the listing as JSON.
    listing = actions_api.list_run_hooks_with_http_info(repo.id, run_id, _preload_content=False)
    hooks = json.loads(listing.raw_data)["results"]
    assert [(h["hook_id"], h["status"]) for h in hooks] == [
        ("first", "completed"),
        ("fails", "failed"),
        ("after_failure", "skipped"),
        ("on_failure", "completed"),
        ("not_success", "completed"),
        ("on_success", "skipped"),
        ("always", "completed"),
    ]
    skipped = [h for h in hooks if h["status"] == "skipped"]
    assert all("end_time" not in h and h["start_time"].startswith("0001-01-01") for h in skipped)
