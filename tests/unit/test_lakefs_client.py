"""What the product reads from lakeFS's answers: branch-safe names, a webhook's answer in a hook
run's output, the refusal when lakeFS cannot run the actions at all."""

from __future__ import annotations

import re

import pytest

from lakeloop.lakefs_client import (
    BATCH_NAME_LENGTH,
    HOOK_ABORTED,
    _configuration_error,
    batch_name,
    webhook_answer,
)

# lakeFS's branch id rule, with Go's ASCII \w (pkg/validator/validate.go ReValidBranchID).
LAKEFS_BRANCH_ID = re.compile(r"^[0-9A-Za-z_][-0-9A-Za-z_]*$")
ANSWER = "data checks failed on data/b/bad.parquet:\n- median_income: out of range (12 rows)"


def lakefs_hook_output(status: str, body: str) -> str:
    """A failed webhook's output as lakeFS writes it (pkg/actions/webhook.go Run and
    doHTTPRequestResponseWithLog, then service.go's ``Error: %s\\n``): the response is Go's
    httputil.DumpResponse, whose body does not end the line before the error."""
    return (
        "Request:\nPOST http://127.0.0.1:8003/webhooks/lakefs/validate\n"
        "Query Params:\nHeaders:\nX-Lakeloop-Token: *******\nContent-Type: *******\n"
        'Request Body:\n{"event_type":"pre-merge"}\n\n'
        "\nRequest duration: 41.2ms\n"
        f"\nResponse:\nHTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nDate: Mon, 30 Nov 2026 16:00:00 GMT\r\n\r\n"
        f"{body}Error: action failed: webhook request failed (status code: 400)\n"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("données été 2026", "donnees-ete-2026"),
        ("Sales 2026/11 (final)", "sales-2026-11-final"),
        ("東京の売上", "batch"),
        ("...", "batch"),
        ("a" * 100, "a" * BATCH_NAME_LENGTH),
    ],
)
def test_batch_names_are_what_lakefs_accepts_in_a_branch_id(given: str, expected: str) -> None:
    name = batch_name(given)
    assert name == expected
    assert LAKEFS_BRANCH_ID.fullmatch(f"ingest-{name}-20261130T160000000000")


def test_the_webhook_answer_is_read_from_lakefs_hook_output() -> None:
    assert webhook_answer(lakefs_hook_output("400 Bad Request", ANSWER)) == ANSWER
    assert webhook_answer(lakefs_hook_output("400 Bad Request", ANSWER + "\n")) == ANSWER


def test_a_hook_without_a_response_has_no_answer() -> None:
    timed_out = (
        "Request:\nPOST http://127.0.0.1:9/x\nQuery Params:\nHeaders:\nRequest Body:\n{}\n\n"
        '\nRequest duration: 50s\nError: action failed: Post "http://127.0.0.1:9/x": '
        "context deadline exceeded\n"
    )
    assert webhook_answer(timed_out) == ""
    assert webhook_answer("") == ""


def test_lakefs_unable_to_run_the_actions_names_the_missing_variable() -> None:
    said = (
        f"pre-merge {HOOK_ABORTED}0123abc': headers: "
        "LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET not found: missing env var"
    )
    error = _configuration_error(said, branch="ingest-b-1")
    assert "lacks LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET" in str(error)
    assert "ingest-b-1" in str(error)
    assert "Nothing was judged or merged" in str(error)
    other = _configuration_error(f"pre-merge {HOOK_ABORTED}r': 'on' is required", branch="b")
    assert "could not load or configure the repository's actions" in str(other)
