"""lakeFS Actions for the local server: action files, matching, webhooks, run records.

Follows lakeFS (pkg/actions, pkg/graveler): action files are every object directly under
``_lakefs_actions/`` at the hook's source ref (the branch with its staging for pre-commit, the
source commit for pre-merge, the new commit for post-*); an action matches on its ``on`` event and
a glob on the destination branch; hooks of one action run in order and the first failure skips
the rest; a pre-* failure aborts the operation (HTTP 412), a post-* failure is only logged and
post-* hooks run in the background. A webhook is an HTTP POST of lakeFS's ``EventInfo`` JSON.
``{{ ENV.NAME }}`` in ``query_params``/``headers`` reads the server's environment, restricted to
names starting with ``actions.env.prefix`` (lakeFS default ``LAKEFSACTION_``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml

from lakefs_local.store import (
    ActionRunRecord,
    CommitRecord,
    HookRunRecord,
    PreconditionFailedError,
    Store,
    branch_matches,
)

log = logging.getLogger(__name__)

ACTIONS_PREFIX = "_lakefs_actions/"  # lakeFS catalog.repositoryLocation
DEFAULT_ENV_PREFIX = "LAKEFSACTION_"  # lakeFS default of actions.env.prefix
DEFAULT_TIMEOUT_SECONDS = 60.0  # lakeFS webhookClientDefaultTimeout = 1 minute
SUPPORTED_EVENTS = frozenset(
    f"{when}-{what}"
    for when in ("pre", "post")
    for what in ("commit", "merge", "create-branch", "delete-branch", "create-tag", "delete-tag")
)
_ACTION_NAME = re.compile(r"^\w[\w\-. ]+$")
_HOOK_ID = re.compile(r"^[_a-zA-Z][\-_a-zA-Z0-9]{1,255}$")
_ENV_TEMPLATE = re.compile(r"{{ ?ENV\..*? ?}}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_TEXT = 2000


class ActionError(Exception):
    """An invalid action file or a failed hook."""


@dataclass(frozen=True)
class HookRecord:
    """What lakeFS's graveler.HookRecord carries into a hook."""

    event_type: str
    repository_id: str
    branch_id: str
    source_ref: str
    commit: CommitRecord | None = None  # only commit and merge events carry one
    commit_id: str = ""
    pre_run_id: str = ""
    tag_id: str = ""


@dataclass
class Hook:
    """One hook of an action."""

    id: str
    type: str
    # As the action file's YAML gives them: the webhook checks each value's type where it reads it.
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Action:
    """A parsed action file."""

    name: str
    on: dict[str, list[str] | None]
    hooks: list[Hook]

    def matches(self, event_type: str, branch: str) -> bool:
        """lakeFS's Action.Match: the event is listed and a branch pattern (if any) matches."""
        return event_type in self.on and branch_matches(self.on[event_type], branch)


def parse_action(raw: bytes, *, source: str = "") -> Action:
    """Parse and validate an action file like lakeFS's ParseAction."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ActionError(f"parsing file {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ActionError(f"parsing file {source}: not a mapping")
    # YAML 1.1 (PyYAML) reads a bare `on` key as the boolean True.
    on_raw = data.get("on", data.get(True))
    name = data.get("name")
    if not isinstance(name, str) or not _ACTION_NAME.match(name):
        raise ActionError(f"parsing file {source}: 'name' is required and must be valid")
    if not isinstance(on_raw, dict) or not on_raw:
        raise ActionError(f"parsing file {source}: 'on' is required")
    on: dict[str, list[str] | None] = {}
    for event, spec in on_raw.items():
        if event not in SUPPORTED_EVENTS:
            raise ActionError(f"parsing file {source}: event '{event}' is not supported")
        on[event] = list((spec or {}).get("branches") or []) or None
        if on[event] and event.endswith("-tag"):  # lakeFS's validateEvent
            raise ActionError(
                f"parsing file {source}: 'branches' is not supported in tag event types"
            )
    return Action(name=name, on=on, hooks=_parse_hooks(data.get("hooks") or [], source=source))


def _parse_hooks(raw_hooks: list[Any], *, source: str) -> list[Hook]:  # YAML, unchecked
    hooks: list[Hook] = []
    for index, raw in enumerate(raw_hooks):
        hook_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(hook_id, str) or not _HOOK_ID.match(hook_id):
            raise ActionError(f"parsing file {source}: hook[{index}] missing ID")
        if any(h.id == hook_id for h in hooks):
            raise ActionError(f"parsing file {source}: hook[{index}] duplicate ID '{hook_id}'")
        hooks.append(Hook(hook_id, str(raw.get("type", "")), dict(raw.get("properties") or {})))
    return hooks


def parse_duration(text: str | None) -> float:
    """Seconds in a Go duration string (``30s``, ``1m30s``, ``500ms``); empty means the default."""
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ActionError(f"webhook request duration: invalid duration {text!r}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def event_payload(action_name: str, hook_id: str, record: HookRecord) -> dict[str, object]:
    """lakeFS's EventInfo (pkg/actions/event.go), with its omitempty fields left out when empty."""
    commit = record.commit
    payload: dict[str, object] = {
        "event_type": record.event_type,
        "event_time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "action_name": action_name,
        "hook_id": hook_id,
        "repository_id": record.repository_id,
        "branch_id": record.branch_id,  # "" for tag events: lakeFS does not omit it
        "source_ref": record.source_ref,
        "tag_id": record.tag_id,
        "commit_id": record.commit_id,
        "commit_message": commit.message if commit else "",
        "committer": commit.committer if commit else "",
        "commit_metadata": commit.metadata if commit else {},
    }
    for omitempty in ("source_ref", "tag_id", "commit_id", "commit_metadata"):
        if not payload[omitempty]:
            del payload[omitempty]
    return payload


def new_run_id() -> str:
    """A run id that sorts newest first, as lakeFS's do."""
    return f"{(1 << 64) - time.time_ns():020d}{secrets.token_hex(3)}"


class EnvRenderer:
    """Renders ``{{ ENV.NAME }}`` like lakeFS's SecureString with an EnvironmentVariableGetter."""

    def __init__(self, prefix: str = DEFAULT_ENV_PREFIX, environ: Mapping[str, str] | None = None):
        self.prefix = prefix
        self.environ = environ if environ is not None else os.environ

    def render(self, text: str) -> tuple[str, bool]:
        """Return the rendered text and whether it held a secret (to mask it in run output)."""
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            source, _, name = match.group(0).strip("{} ").partition(".")
            if source != "ENV" or not name:
                return match.group(0)
            if self.prefix and not name.startswith(self.prefix):
                # lakeFS renders these as empty strings; say so, since it is easy to miss.
                log.warning("action env var %s lacks prefix %s: rendered empty", name, self.prefix)
                return ""
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        rendered, count = _ENV_TEMPLATE.subn(substitute, text)
        if missing:
            raise ActionError(f"{missing[0]} not found: missing env var")
        return rendered, count > 0


class ActionsRunner:
    """Loads, matches and runs the actions of a repository for one event."""

    def __init__(
        self,
        store: Store,
        *,
        env_prefix: str = DEFAULT_ENV_PREFIX,
        environ: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.store = store
        self.env = EnvRenderer(env_prefix, environ)
        self.http = http_client or httpx.Client(follow_redirects=False)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lakefs-post-hook")
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()

    def run_pre(self, record: HookRecord) -> str:
        """Run pre-* hooks synchronously; raise PreconditionFailedError (412) on any failure."""
        run_id = new_run_id()
        try:
            self.run(record, run_id=run_id)
        except ActionError as exc:
            raise PreconditionFailedError(
                f"{record.event_type} hook aborted, run id '{run_id}': {exc}"
            ) from exc
        return run_id

    def run_post(self, record: HookRecord) -> None:
        """Run post-* hooks in the background, as lakeFS does; failures are only logged."""
        future = self._pool.submit(self._run_post_logged, record)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _run_post_logged(self, record: HookRecord) -> None:
        try:
            self.run(record, run_id=new_run_id())
        except ActionError as exc:
            log.error(
                "%s hook failed (repository %s): %s", record.event_type, record.repository_id, exc
            )
        except Exception:
            log.exception(
                "%s hook crashed (repository %s)", record.event_type, record.repository_id
            )

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait for background post-* runs (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending or time.monotonic() > deadline:
                return
            for future in pending:
                future.exception(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Drain background runs and release the HTTP client."""
        self.wait_idle()
        self._pool.shutdown(wait=True)
        self.http.close()

    def load_actions(self, repo: str, source_ref: str) -> list[Action]:
        """Every action file directly under ``_lakefs_actions/`` at ``source_ref``."""
        page = self.store.list_objects(
            repo, source_ref, prefix=ACTIONS_PREFIX, delimiter="/", amount=1000
        )
        actions: list[Action] = []
        for path, entry in page.results:
            if entry is None:
                continue
            action = parse_action(self.store.read_blob(entry.checksum), source=path)
            if any(a.name == action.name for a in actions):
                raise ActionError(f"action name '{action.name}' already loaded")
            actions.append(action)
        return actions

    def run(self, record: HookRecord, *, run_id: str) -> None:
        """Run the matching actions; record the run; raise ActionError on the first failure."""
        actions = [
            a
            for a in self.load_actions(record.repository_id, record.source_ref)
            if a.matches(record.event_type, record.branch_id)
        ]
        if not actions:
            return
        started = time.time()
        hook_runs: list[HookRunRecord] = []
        errors: list[str] = []
        for action_index, action in enumerate(actions):
            failed = False
            for hook_index, hook in enumerate(action.hooks):
                hook_run_id = f"{action_index:04d}_{hook_index:04d}"  # lakeFS's NewHookRunID
                if failed:  # lakeFS skips the rest of an action after a failure
                    now = time.time()
                    hook_runs.append(
                        HookRunRecord(hook_run_id, action.name, hook.id, now, now, "skipped")
                    )
                    continue
                run, error = self._run_hook(action, hook, record, hook_run_id)
                hook_runs.append(run)
                if error is not None:
                    failed = True
                    errors.append(
                        f"hook run id '{hook_run_id}' failed on action '{action.name}' "
                        f"hook '{hook.id}': {error}"
                    )
        status = "failed" if errors else "completed"
        self.store.save_action_run(
            record.repository_id,
            ActionRunRecord(
                run_id,
                record.branch_id,
                record.commit_id,
                record.source_ref,
                record.event_type,
                started,
                time.time(),
                status,
            ),
            hook_runs,
        )
        if record.pre_run_id and record.commit_id:
            self.store.set_run_commit(record.repository_id, record.pre_run_id, record.commit_id)
        if errors:
            raise ActionError("; ".join(errors))

    def _run_hook(
        self, action: Action, hook: Hook, record: HookRecord, hook_run_id: str
    ) -> tuple[HookRunRecord, str | None]:
        """Run one hook; return its record and the error text (None when it passed)."""
        started = time.time()
        lines: list[str] = []
        error: str | None = None
        try:
            if hook.type != "webhook":
                raise ActionError(f"hook type '{hook.type}' is not supported by this server")
            self._webhook(action, hook, record, lines)
        except (ActionError, httpx.HTTPError) as exc:
            error = str(exc) or type(exc).__name__
            lines.append(f"Error: {error}")
        status = "failed" if error else "completed"
        output = "\n".join(lines)
        run = HookRunRecord(hook_run_id, action.name, hook.id, started, time.time(), status, output)
        return run, error

    def _webhook(self, action: Action, hook: Hook, record: HookRecord, lines: list[str]) -> None:
        props = hook.properties
        url = props.get("url")
        if not isinstance(url, str) or not url:
            raise ActionError("missing url: webhook wrong format")
        timeout = parse_duration(props.get("timeout"))
        params, shown_params = self._query_params(props.get("query_params") or {})
        headers, shown_headers = self._headers(props.get("headers") or {})
        headers["Content-Type"] = "application/json"
        payload = event_payload(action.name, hook.id, record)
        lines += [f"Request:\nPOST {url}", f"Query Params:\n{shown_params}"]
        lines += [f"Headers:\n{shown_headers}", f"Request Body:\n{payload}"]
        response = self.http.post(
            url, params=params, headers=headers, json=payload, timeout=timeout
        )
        body = response.text[:_MAX_TEXT]
        lines.append(f"Response:\n{response.status_code}\n{body}")
        if not 200 <= response.status_code < 300:
            raise ActionError(
                f"webhook request failed (status code: {response.status_code}): {body}"
            )

    def _query_params(self, raw: Mapping[str, object]) -> tuple[tuple[tuple[str, str], ...], str]:
        params: list[tuple[str, str]] = []
        shown: list[str] = []
        for key, value in raw.items():
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, str):
                    raise ActionError("query params values must be strings: webhook wrong format")
                rendered, secret = self.env.render(item)
                params.append((str(key), rendered))
                shown.append(f"{key}: {'*******' if secret else rendered}")
        return tuple(params), "\n".join(shown)

    def _headers(self, raw: Mapping[str, object]) -> tuple[dict[str, str], str]:
        headers: dict[str, str] = {}
        shown: list[str] = []
        for key, value in raw.items():
            if not isinstance(value, str):
                raise ActionError("headers values must be strings: webhook wrong format")
            rendered, secret = self.env.render(value)
            headers[str(key)] = rendered
            # Secrets never reach logs or run output, as lakeFS masks SecureString values.
            shown.append(f"{key}: {'*******' if secret else rendered}")
        return headers, "\n".join(shown)
