"""lakeFS Actions for the local server: action files, matching, webhooks, run records.

Follows lakeFS v1.x (pkg/actions, pkg/graveler, pkg/api/controller.go), file by file:

- Loading (action.go LoadActions, Validate): every entry directly under ``_lakefs_actions/`` at
  the hook's source ref (the branch with its staging for pre-commit, the source commit for
  pre-merge, the new commit for post-*) is parsed and validated, *whichever event it is for*: one
  invalid file, an unknown hook type or a sub-folder there fails every event of the repository.
  lakeFS's hook types are ``webhook``, ``airflow`` and ``lua``; this server runs webhooks only and
  reports an airflow or lua hook that is due to run as that hook's failure.
- Matching (action.go Match): the event is listed under ``on`` and a branch glob (if any) matches.
- Building (service.go allocateTasks, webhook.go NewWebhook): every hook of every matching action
  is built before any runs; ``{{ ENV.NAME }}`` in ``query_params``/``headers`` is read then, from
  variables whose names start with ``actions.env.prefix`` (lakeFS default ``LAKEFSACTION_``).
- Running (service.go runTasks): matching actions run concurrently, the hooks of one action in
  order; a hook runs while its action has no error unless its ``if`` (``success()``,
  ``failure()``...) says otherwise; a webhook POSTs lakeFS's ``EventInfo`` JSON (event.go) and
  fails on a non-2xx answer. Each hook writes lakeFS's output text (request, duration, response
  dump, ``Error:`` line) and the run is recorded (service.go saveRunInformation).
- Failing (graveler HookAbortError, controller handleApiErrorCallback): a pre-* failure aborts the
  operation with ``<event> hook aborted, run id '<run>': <error>``; HTTP 412 when a hook failed,
  404/500 when the actions could not be loaded or built or an ``if`` could not be evaluated.
  Post-* hooks run in the background and their failures are only logged.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import yaml

from lakefs_local.store import (
    ActionRunRecord,
    CommitRecord,
    HookRunRecord,
    LakeFSError,
    NotFoundError,
    ObjectEntry,
    PreconditionFailedError,
    Store,
    branch_matches,
)

log = logging.getLogger(__name__)

ACTIONS_PREFIX = "_lakefs_actions/"  # lakeFS catalog.repositoryLocation
DEFAULT_ENV_PREFIX = "LAKEFSACTION_"  # lakeFS default of actions.env.prefix
DEFAULT_TIMEOUT_SECONDS = 60.0  # lakeFS webhookClientDefaultTimeout = 1 minute
MAX_REDIRECTS = 10  # Go's http.Client follows at most 10 redirects
GO_ZERO_TIME = -62135596800.0
"""Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds: lakeFS's times of a skipped hook."""
SUPPORTED_EVENTS = frozenset(  # graveler's EventType values (hooks_handler.go)
    {"prepare-commit"}
    | {
        f"{when}-{what}"
        for when in ("pre", "post")
        for what in (
            "commit",
            "merge",
            "create-branch",
            "delete-branch",
            "create-tag",
            "delete-tag",
            "revert",
            "cherry-pick",
        )
    }
)
HOOK_TYPES = ("webhook", "airflow", "lua")  # lakeFS's hook.go `hooks`
RUN_BY_THIS_SERVER = frozenset({"webhook"})  # the others are checked, then fail when due
# hook.go hookValidators: each group names properties of which at least one must be given.
_REQUIRED_PROPERTIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "webhook": (("url",),),
    "airflow": (("url",), ("dag_id",), ("username",), ("password",)),
    "lua": (("script", "script_path"),),
}
_ACTION_NAME = re.compile(r"^\w[\w\-. ]+$")
_HOOK_ID = re.compile(r"^[_a-zA-Z][\-_a-zA-Z0-9]{1,255}$")
_ENV_TEMPLATE = re.compile(r"{{ ?ENV\..*? ?}}")
_DURATION_PART = re.compile(r"(\d*(?:\.\d*)?)([^\d.]*)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5
    "μs": 1e-6,  # U+03BC
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_INVALID_ACTION = "invalid action"  # lakeFS's ErrInvalidAction
_WRONG_FORMAT = "webhook wrong format"  # lakeFS's errWebhookWrongFormat
_ACTION_FAILED = "action failed"  # lakeFS's ErrActionFailed: what makes a failure a 412


class ActionError(Exception):
    """Actions that cannot run or did not pass, with the HTTP status lakeFS answers for them.

    500 for an action file lakeFS cannot load or a hook it cannot build, 404 for an entry under
    ``_lakefs_actions/`` that is not a file, 412 when a hook ran and failed.
    """

    def __init__(self, message: str, *, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


class ActionConfigError(LakeFSError):
    """A pre-* event aborted by actions that could not be loaded or built, or by an ``if`` that
    could not be evaluated (lakeFS: 500, not ErrActionFailed's 412)."""

    status_code = 500


class HookRunError(Exception):
    """A hook ran and failed: the text lakeFS's hook Run returns."""


# -- what an event carries ---------------------------------------------------------------------


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
    merge_source: str = ""  # merge events: the source ref as the caller named it


def event_payload(action_name: str, hook_id: str, record: HookRecord) -> dict[str, object]:
    """lakeFS's EventInfo (pkg/actions/event.go), its ``omitempty`` fields left out when empty."""
    commit = record.commit
    payload: dict[str, object] = {
        "event_type": record.event_type,
        "event_time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "action_name": action_name,
        "hook_id": hook_id,
        "repository_id": record.repository_id,
    }
    optional: dict[str, object] = {
        "branch_id": record.branch_id,
        "source_ref": record.source_ref,
        "tag_id": record.tag_id,
        "commit_id": record.commit_id,
        "commit_message": commit.message if commit else "",
        "committer": commit.committer if commit else "",
        # Go's encoding/json writes map keys sorted.
        "commit_metadata": dict(sorted(commit.metadata.items())) if commit else {},
        "merge_source": record.merge_source,
    }
    payload.update((key, value) for key, value in optional.items() if value)
    return payload


def go_json(value: object) -> str:
    """Compact JSON as Go's encoding/json writes it (``<``, ``>``, ``&`` escaped for HTML)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def new_run_id() -> str:
    """A run id that sorts newest first, as lakeFS's do."""
    return f"{(1 << 64) - time.time_ns():020d}{secrets.token_hex(3)}"


# -- action files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionHook:
    """One hook as an action file declares it."""

    id: str
    type: str
    if_expression: str = ""
    # As the action file's YAML gives them (None: no ``properties`` key): each hook type checks
    # the types of the values it reads, as lakeFS's do.
    properties: dict[str, Any] | None = None


@dataclass(frozen=True)
class Action:
    """A parsed and validated action file."""

    name: str
    on: dict[str, list[str] | None]
    hooks: list[ActionHook] = field(default_factory=list)

    def matches(self, event_type: str, branch: str) -> bool:
        """lakeFS's Action.Match: the event is listed and a branch pattern (if any) matches."""
        return event_type in self.on and branch_matches(self.on[event_type], branch)


def parse_action(raw: bytes) -> Action:
    """Parse and validate an action file like lakeFS's ParseAction; raise ActionError."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ActionError(f"yaml: {exc}") from exc
    if data is None:
        data = {}  # an empty file is an Action with nothing set: Validate says what is missing
    if not isinstance(data, dict):
        raise _unmarshal_error(data, "actions.Action")
    # PyYAML reads a bare `on` key as YAML 1.1's boolean True; lakeFS's yaml.v3 as the string.
    on_raw = data.get("on", data.get(True))
    name = _yaml_string(data.get("name"))
    if not name:
        raise ActionError(f"'name' is required: {_INVALID_ACTION}")
    if not _ACTION_NAME.match(name):
        raise ActionError(f"'name' is invalid: {_INVALID_ACTION}")
    on = _parse_on(on_raw)
    return Action(name=name, on=on, hooks=_parse_hooks(data.get("hooks")))


def _parse_on(on_raw: object) -> dict[str, list[str] | None]:
    if on_raw is not None and not isinstance(on_raw, dict):
        raise _unmarshal_error(on_raw, "map[graveler.EventType]*actions.ActionOn")
    if not on_raw:
        raise ActionError(f"'on' is required: {_INVALID_ACTION}")
    on: dict[str, list[str] | None] = {}
    for event, spec in on_raw.items():
        if spec is not None and not isinstance(spec, dict):
            raise _unmarshal_error(spec, "actions.ActionOn")
        branches = (spec or {}).get("branches")
        if branches is not None and not isinstance(branches, list):
            raise _unmarshal_error(branches, "[]string")
        on[str(event)] = [_yaml_string(b) for b in branches] if branches else None
    for event, branch_list in on.items():  # action.go validateEvent
        if event not in SUPPORTED_EVENTS:
            raise ActionError(f"event '{event}' is not supported: {_INVALID_ACTION}")
        if branch_list and event.endswith("-tag"):
            raise ActionError(
                "'branches' is not supported in tag event types. invalid event parameter"
            )
    return on


def _parse_hooks(raw_hooks: object) -> list[ActionHook]:
    if raw_hooks is None:
        return []
    if not isinstance(raw_hooks, list):
        raise _unmarshal_error(raw_hooks, "[]actions.ActionHook")
    hooks: list[ActionHook] = []
    for index, raw in enumerate(raw_hooks):
        if not isinstance(raw, dict):
            raise _unmarshal_error(raw, "actions.ActionHook")
        properties = raw.get("properties")
        if properties is not None and not isinstance(properties, dict):
            raise _unmarshal_error(properties, "actions.Properties")
        hook = ActionHook(
            id=_yaml_string(raw.get("id")),
            type=_yaml_string(raw.get("type")),
            if_expression=_yaml_string(raw.get("if")),
            properties=properties,
        )
        _validate_hook(index, hook, seen=[h.id for h in hooks])
        hooks.append(hook)
    return hooks


def _validate_hook(index: int, hook: ActionHook, *, seen: list[str]) -> None:
    """lakeFS's Action.Validate for one hook: id, type, required properties."""
    if not _HOOK_ID.match(hook.id):
        raise ActionError(f"hook[{index}] missing ID: {_INVALID_ACTION}")
    if hook.id in seen:
        raise ActionError(f"hook[{index}] duplicate ID '{hook.id}': {_INVALID_ACTION}")
    if hook.type not in HOOK_TYPES:
        # lakeFS names the hook's id here, not its type (action.go, Validate).
        raise ActionError(f"hook[{index}] type '{hook.id}' unknown: {_INVALID_ACTION}")
    if hook.properties is None:
        reason = f"missing hook properties: {_INVALID_ACTION}"
        raise ActionError(f"hook[{index}] type '{hook.type}': {reason}")
    for group in _REQUIRED_PROPERTIES[hook.type]:
        if not any(key in hook.properties for key in group):
            names = "' or '".join(group)
            reason = f"'{names}' must be supplied in properties: {_INVALID_ACTION}"
            raise ActionError(f"hook[{index}] type '{hook.type}': {reason}")


def _yaml_string(value: object) -> str:
    """A scalar read into a Go string field: yaml.v3 takes any scalar's text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise _unmarshal_error(value, "string")


def _unmarshal_error(value: object, go_type: str) -> ActionError:
    kind = {dict: "map", list: "seq", str: "str", bool: "bool", int: "int", float: "float"}
    tag = kind.get(type(value), "null" if value is None else type(value).__name__)
    return ActionError(f"yaml: unmarshal errors:\n  cannot unmarshal !!{tag} into {go_type}")


# -- Go's texts: durations, error lists, response dumps ----------------------------------------


def parse_duration(text: str | None) -> float:
    """A webhook's timeout in seconds: a Go duration (``30s``, ``1m30s``); empty: the default."""
    return go_parse_duration(text) if text else DEFAULT_TIMEOUT_SECONDS


def go_parse_duration(text: str) -> float:
    """Seconds in a Go duration string, as Go's time.ParseDuration reads it; raise ActionError."""
    quoted = _go_quote(text)
    body = text[1:] if text[:1] in {"+", "-"} else text
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    if not body:
        raise ActionError(f"time: invalid duration {quoted}")
    total = 0.0
    for number, unit in _DURATION_PART.findall(body)[:-1]:  # findall ends with an empty match
        if number in {"", "."}:
            raise ActionError(f"time: invalid duration {quoted}")
        if not unit:
            raise ActionError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ActionError(f"time: unknown unit {_go_quote(unit)} in duration {quoted}")
        total += float(number) * _DURATION_UNITS[unit]
    return sign * total


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration.String writes it (``1.5s``, ``2m0s``, ``312.5µs``)."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_fraction(nanos, 3)}µs"
    if nanos < 1_000_000_000:
        return f"{sign}{_fraction(nanos, 6)}ms"
    text = f"{_fraction(nanos % 60_000_000_000, 9)}s"
    minutes = nanos // 60_000_000_000
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _fraction(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    decimals = f"{rest:0{digits}d}".rstrip("0")
    return f"{whole}.{decimals}" if decimals else str(whole)


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def error_list(errors: list[str]) -> str:
    """hashicorp/go-multierror's list format, as lakeFS's errors from concurrent work read."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {error}" for error in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


def dump_response(response: httpx.Response) -> bytes:
    """What Go's httputil.DumpResponse(resp, true) writes for the response Go's client read.

    Status line, the headers Go keeps (keys canonical and sorted, framing headers first, as
    Response.Write writes them), a blank line, the body (chunk-framed when it came chunked).
    """
    header = _go_header(response)
    major, _, minor = response.http_version.removeprefix("HTTP/").partition(".")
    status = f"HTTP/{major}.{minor or '0'} {response.status_code:03d} {response.reason_phrase}"
    body = response.content
    chunked = "chunked" in ",".join(header.pop("Transfer-Encoding", [])).lower()
    content_length = -1 if chunked else _content_length(header)
    if not _body_allowed(response):
        content_length = 0  # Go's fixLength: 1xx, 204 and 304 answers have no body
    uncompressed = False
    if ",".join(header.get("Content-Encoding", [])).lower() == "gzip":
        # Go's transport asked for gzip itself: it unzips and drops the framing that described it.
        header.pop("Content-Encoding", None)
        header.pop("Content-Length", None)
        content_length, uncompressed = -1, True
    proto = (int(major or 1), int(minor or 0))
    close = _closes(*proto, ",".join(header.get("Connection", [])))
    if close and proto >= (1, 1):
        header.pop("Connection", None)  # Go's shouldClose drops the "close" it acted on
    if content_length == -1 and proto >= (1, 1) and not (chunked or uncompressed):
        close = True  # Response.Write: an HTTP/1.1 body of unknown length ends at the close
    method = response.request.method
    lines = [status]
    if close and not _has_token(",".join(header.get("Connection", [])), "close"):
        lines.append("Connection: close")
    sends_length = not chunked and (
        content_length > 0 or (content_length == 0 and method not in {"GET", "HEAD"})
    )
    if sends_length:
        lines.append(f"Content-Length: {content_length}")
    elif chunked:
        lines.append("Transfer-Encoding: chunked")
    for key in sorted(header):
        if key in {"Content-Length", "Transfer-Encoding", "Trailer"}:
            continue
        lines += [f"{key}: {_header_value(value)}" for value in header[key]]
    if content_length == 0 and not chunked and not sends_length and _body_allowed(response):
        lines.append("Content-Length: 0")
    head = "".join(f"{line}\r\n" for line in lines).encode("latin-1", errors="replace")
    if chunked:
        framed = (f"{len(body):x}\r\n".encode() + body + b"\r\n") if body else b""
        return head + b"\r\n" + framed + b"0\r\n\r\n"
    return head + b"\r\n" + body


def _go_header(response: httpx.Response) -> dict[str, list[str]]:
    header: dict[str, list[str]] = {}
    for raw_key, raw_value in response.headers.raw:
        key = _canonical_header_key(raw_key.decode("latin-1"))
        header.setdefault(key, []).append(raw_value.decode("latin-1"))
    return header


def _canonical_header_key(key: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: ``content-type`` -> ``Content-Type``."""
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", key):
        return key  # Go leaves keys with characters outside a token as they are
    return "-".join(part[:1].upper() + part[1:].lower() for part in key.split("-"))


def _content_length(header: dict[str, list[str]]) -> int:
    values = header.get("Content-Length")
    try:
        return int(values[0].strip()) if values else -1
    except ValueError:
        return -1


def _closes(major: int, minor: int, connection: str) -> bool:
    """Go's shouldClose: HTTP/1.0 closes unless kept alive, HTTP/1.1 when told to."""
    if major < 1:
        return True
    if major == 1 and minor == 0:
        return _has_token(connection, "close") or not _has_token(connection, "keep-alive")
    return _has_token(connection, "close")


def _has_token(header_value: str, token: str) -> bool:
    return token in {part.strip().lower() for part in header_value.split(",")}


def _header_value(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ").strip(" \t")


def _body_allowed(response: httpx.Response) -> bool:
    code = response.status_code
    return not (100 <= code < 200 or code in {204, 304})


def go_client_error(url: str, exc: Exception) -> str:
    """The text Go's http.Client returns for a request that got no answer (a ``*url.Error``)."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host_port = f"{parsed.hostname}:{port}"
    if isinstance(exc, httpx.TimeoutException):
        reason = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
    elif isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower():
        reason = f"dial tcp {host_port}: connect: connection refused"
    elif isinstance(exc, httpx.ConnectError) and _is_unknown_host(exc):
        reason = f"dial tcp: lookup {parsed.hostname}: no such host"
    elif isinstance(exc, httpx.ConnectError):
        reason = f"dial tcp {host_port}: {exc}"
    elif isinstance(exc, httpx.UnsupportedProtocol):
        reason = f"unsupported protocol scheme {_go_quote(parsed.scheme)}"
    elif isinstance(exc, httpx.TooManyRedirects):
        reason = f"stopped after {MAX_REDIRECTS} redirects"
    else:
        reason = str(exc) or type(exc).__name__
    return f"Post {_go_quote(url)}: {reason}"


def _is_unknown_host(exc: Exception) -> bool:
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, socket.gaierror):
        cause = cause.__cause__ or cause.__context__
    return cause is not None or "Name or service not known" in str(exc)


# -- secrets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureString:
    """lakeFS's SecureString: a value that came from the environment is shown masked."""

    value: str
    secret: bool = False

    def __str__(self) -> str:
        return "*******" if self.secret else self.value


class EnvRenderer:
    """Renders ``{{ ENV.NAME }}`` as lakeFS's NewSecureString with an EnvironmentVariableGetter."""

    def __init__(self, prefix: str = DEFAULT_ENV_PREFIX, environ: Mapping[str, str] | None = None):
        self.prefix = prefix
        self.environ = environ if environ is not None else os.environ

    def secure(self, text: str) -> SecureString:
        """The rendered text, secret when it held a template; ActionError for a missing name."""
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if missing:
                return ""
            _, _, name = match.group(0).strip("{} ").partition(".")
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
        return SecureString(rendered, secret=count > 0)


# -- hooks -------------------------------------------------------------------------------------


class RunnableHook(Protocol):
    """A built hook (lakeFS's Hook interface): runs for one event, writing its output text."""

    def run(self, record: HookRecord, output: io.StringIO) -> None:
        """Run; raise HookRunError with lakeFS's text when the hook fails."""
        ...


@dataclass(frozen=True)
class Webhook:
    """lakeFS's webhook (pkg/actions/webhook.go): POST the event as JSON, fail on non-2xx."""

    action_name: str
    hook_id: str
    url: str
    timeout: float
    query_params: list[tuple[str, SecureString]]
    headers: dict[str, SecureString]
    http: httpx.Client

    @classmethod
    def build(
        cls, hook: ActionHook, action: Action, *, env: EnvRenderer, http: httpx.Client
    ) -> Webhook:
        """lakeFS's NewWebhook: read and check the properties; raise ActionError."""
        props = hook.properties or {}
        url = props.get("url")
        if "url" not in props:
            raise ActionError(f"missing url: {_WRONG_FORMAT}")
        if not isinstance(url, str):
            raise ActionError(f"webhook url must be string: {_WRONG_FORMAT}")
        try:
            query_params = _query_params(props, env)
        except ActionError as exc:
            raise ActionError(f"extracting query params: {exc}") from exc
        try:
            headers = _headers(props, env)
        except ActionError as exc:
            raise ActionError(f"extracting headers: {exc}") from exc
        timeout = DEFAULT_TIMEOUT_SECONDS
        raw_timeout = props.get("timeout")
        if isinstance(raw_timeout, str) and raw_timeout:
            try:
                timeout = go_parse_duration(raw_timeout)
            except ActionError as exc:
                raise ActionError(f"webhook request duration: {exc}") from exc
        return cls(action.name, hook.id, url, timeout, query_params, headers, http)

    def run(self, record: HookRecord, output: io.StringIO) -> None:
        """lakeFS's Webhook.Run and doHTTPRequestResponseWithLog, output text included."""
        body = go_json(event_payload(self.action_name, self.hook_id, record))
        output.write(f"Request:\nPOST {self.url}\n")
        target = _with_query(self.url, [(key, value.value) for key, value in self.query_params])
        headers = {**self.headers, "Content-Type": SecureString("application/json")}
        output.write("Query Params:\n")
        output.writelines(f"{key}: {value}\n" for key, value in self.query_params)
        output.write("Headers:\n")
        output.writelines(f"{key}: {value}\n" for key, value in headers.items())
        output.write(f"Request Body:\n{body}\n\n")
        started = time.monotonic()
        try:
            response = self.http.post(
                target,
                content=body.encode(),
                headers=[(_canonical_header_key(k), v.value) for k, v in headers.items()],
                timeout=self.timeout if self.timeout > 0 else None,  # Go: 0 means no limit
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            output.write(f"\nRequest duration: {go_duration(time.monotonic() - started)}\n")
            raise HookRunError(go_client_error(target, exc)) from exc
        output.write(f"\nRequest duration: {go_duration(time.monotonic() - started)}\n")
        output.write("\nResponse:\n")
        output.write(dump_response(response).decode("utf-8", errors="replace"))
        if not 200 <= response.status_code < 300:
            raise HookRunError(f"webhook request failed (status code: {response.status_code})")


def _query_params(props: Mapping[str, object], env: EnvRenderer) -> list[tuple[str, SecureString]]:
    """webhook.go extractQueryParams: a string or a list of strings per name."""
    if "query_params" not in props:
        return []
    raw = props["query_params"]
    if not isinstance(raw, dict):
        raise ActionError(f"unsupported query params: {_WRONG_FORMAT}")
    params: list[tuple[str, SecureString]] = []
    for key, value in raw.items():
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ActionError(
                    f"query params array should contains only strings: {_WRONG_FORMAT}"
                )
            items = value
        elif isinstance(value, str):
            items = [value]
        else:
            raise ActionError(
                f"query params single value should be of type string: {_WRONG_FORMAT}"
            )
        for item in items:
            try:
                params.append((str(key), env.secure(item)))
            except ActionError as exc:
                raise ActionError(f"reading query param: {exc}") from exc
    return params


def _headers(props: Mapping[str, object], env: EnvRenderer) -> dict[str, SecureString]:
    """webhook.go extractHeaders: one string per header name."""
    if "headers" not in props:
        return {}
    raw = props["headers"]
    if not isinstance(raw, dict):
        raise ActionError(f"unsupported headers: {_WRONG_FORMAT}")
    headers: dict[str, SecureString] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ActionError(f"headers array should contains only strings: {_WRONG_FORMAT}")
        try:
            headers[str(key)] = env.secure(value)
        except ActionError as exc:
            raise ActionError(f"reading header: {exc}") from exc
    return headers


def _with_query(url: str, params: list[tuple[str, str]]) -> str:
    """The URL with ``params`` added to its own query, encoded as Go's url.Values.Encode does:
    sorted by name, ``+`` for spaces."""
    base, hash_mark, fragment = url.partition("#")
    path, _, raw_query = base.partition("?")
    values: list[tuple[str, str]] = []
    for pair in raw_query.split("&"):
        if pair and ";" not in pair:  # Go's ParseQuery drops pairs holding a semicolon
            key, _, value = pair.partition("=")
            values.append((urllib.parse.unquote_plus(key), urllib.parse.unquote_plus(value)))
    values += params
    values.sort(key=lambda pair: pair[0])  # stable: a name's values keep their order
    query = urllib.parse.urlencode(values, quote_via=urllib.parse.quote_plus)
    return f"{path}{'?' if query else ''}{query}{hash_mark}{fragment}"


@dataclass(frozen=True)
class UnsupportedHook:
    """An airflow or lua hook: lakeFS runs these, this server cannot, so it fails when due."""

    type: str

    @classmethod
    def build(cls, hook: ActionHook, *, env: EnvRenderer) -> UnsupportedHook:
        """Check the properties as lakeFS's NewAirflowHook / NewLuaHook do; raise ActionError."""
        props = hook.properties or {}
        if hook.type == "airflow":
            _check_airflow(props, env)
        elif hook.type == "lua":
            _check_lua(props)
        return cls(hook.type)

    def run(self, record: HookRecord, output: io.StringIO) -> None:
        """Fail: the built-in server has no airflow client and no Lua runtime."""
        raise HookRunError(f"hook type '{self.type}' is not supported by the built-in server")


def _required_property(props: Mapping[str, object], key: str) -> str:
    """action.go Properties.getRequiredProperty."""
    if key not in props:
        raise ActionError(f"key {key}: missing key in properties")
    value = props[key]
    if not isinstance(value, str):
        raise ActionError(f"value of {key} is not of type string: wrong value type")
    if not value:
        raise ActionError(f"value of {key} is empty: missing key in properties")
    return value


def _check_airflow(props: Mapping[str, object], env: EnvRenderer) -> None:
    """airflow.go NewAirflowHook's checks."""
    for key, label in (
        ("url", "url"),
        ("dag_id", "DAG ID"),
        ("username", "username"),
        ("password", "password"),
    ):
        try:
            value = _required_property(props, key)
            if key == "password":
                env.secure(value)
        except ActionError as exc:
            raise ActionError(f"airflow hook {label} property: {exc}") from exc
    timeout = props.get("timeout")
    if isinstance(timeout, str):
        try:
            go_parse_duration(timeout)
        except ActionError as exc:
            raise ActionError(f"airflow hook timeout property: {exc}") from exc
    if "dag_conf" in props and not isinstance(props["dag_conf"], dict):
        raise ActionError("airflow hook conf is not of type Properties: wrong value type")


def _check_lua(props: Mapping[str, object]) -> None:
    """lua.go NewLuaHook's checks (its ``args`` environment templates are not read here): an
    empty ``script`` counts as missing, so ``script_path`` is looked at then."""
    if "args" in props and not isinstance(props["args"], dict):
        raise ActionError("'args' should be a map: wrong value type")
    for key in ("script", "script_path"):
        value = props.get(key)
        if isinstance(value, str) and value:
            return
        if key in props and not isinstance(value, str):
            raise ActionError(f"value of {key} is not of type string: wrong value type")
    raise ActionError("'script' or 'script_path' must be supplied: wrong value type")


# -- `if` expressions --------------------------------------------------------------------------


class IfExpressionError(Exception):
    """An ``if`` that does not evaluate to a boolean (or that this server cannot evaluate)."""


_IF_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||==|!=|!|\(|\))|(?P<number>\d+(?:\.\d+)?)"
    r"|(?P<string>\"[^\"]*\"|'[^']*')|(?P<name>[A-Za-z_]\w*))"
)


def evaluate_if(expression: str, *, action_failed: bool) -> bool:
    """lakeFS's runHookIfEval: no ``if`` runs a hook while its action has no error; an ``if`` is
    an expr-lang expression over ``success()`` and ``failure()``.

    This server evaluates the boolean part of expr-lang: ``true``, ``false``, ``success()``,
    ``failure()``, ``!``/``not``, ``&&``/``and``, ``||``/``or``, ``==``, ``!=``, parentheses and
    number/string literals; anything else is an IfExpressionError, as an invalid one is in lakeFS.
    """
    if not expression:
        return not action_failed
    result = _IfParser(expression, action_failed=action_failed).parse()
    if not isinstance(result, bool):
        raise IfExpressionError("hook 'if' expression should evaluate to a boolean")
    return result


_FUNCTION_VALUE = object()
"""``success`` without ``()``: in expr-lang the function itself, which is not a boolean."""


class _IfParser:
    """Recursive descent over expr-lang's precedence: ``or`` < ``and`` < ``==``/``!=`` < ``not``."""

    def __init__(self, text: str, *, action_failed: bool) -> None:
        self.text = text
        self.functions = {"success": not action_failed, "failure": action_failed}
        self.tokens = self._tokenize(text)
        self.position = 0

    def _tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        index = 0
        while index < len(text):
            match = _IF_TOKEN.match(text, index)
            if match is None or match.end() == index:
                if text[index:].strip():
                    raise self._error(f"unexpected {text[index:].strip()[:1]!r}")
                break
            tokens.append(match.group(match.lastgroup or "op"))
            index = match.end()
        return tokens

    def _error(self, reason: str) -> IfExpressionError:
        return IfExpressionError(
            f"hook 'if' expression {self.text!r}: {reason} (the built-in server evaluates "
            "true, false, success(), failure(), !, &&, ||, ==, != and parentheses)"
        )

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise self._error("unexpected end")
        self.position += 1
        return token

    def parse(self) -> object:
        value = self._or()
        if self._peek() is not None:
            raise self._error(f"unexpected {self._peek()!r}")
        return value

    def _or(self) -> object:
        value = self._and()
        while self._peek() in {"||", "or"}:
            self._take()
            value = self._logical(value, self._and(), "||")
        return value

    def _and(self) -> object:
        value = self._equality()
        while self._peek() in {"&&", "and"}:
            self._take()
            value = self._logical(value, self._equality(), "&&")
        return value

    def _logical(self, left: object, right: object, operator: str) -> bool:
        if not isinstance(left, bool) or not isinstance(right, bool):
            raise self._error(f"invalid operation: {operator} needs booleans")
        return (left or right) if operator == "||" else (left and right)

    def _equality(self) -> object:
        value = self._unary()
        while self._peek() in {"==", "!="}:
            equal = self._take() == "=="
            right = self._unary()
            same = isinstance(value, bool) == isinstance(right, bool) and value == right
            value = same is equal
        return value

    def _unary(self) -> object:
        if self._peek() in {"!", "not"}:
            self._take()
            operand = self._unary()
            if not isinstance(operand, bool):
                raise self._error("invalid operation: ! needs a boolean")
            return not operand
        return self._primary()

    def _primary(self) -> object:
        token = self._take()
        literals: dict[str, object] = {"true": True, "false": False, "nil": None}
        if token == "(":  # noqa: S105 (a token of the expression, not a password)
            value = self._or()
            if self._take() != ")":
                raise self._error("missing ')'")
            return value
        if token in literals:
            return literals[token]
        if token[0] in "\"'":
            return token[1:-1]
        if token[0].isdigit():
            return float(token) if "." in token else int(token)
        if token in self.functions:
            if self._peek() != "(":
                return _FUNCTION_VALUE
            self._take()
            if self._take() != ")":
                raise self._error(f"{token}() takes no arguments")
            return self.functions[token]
        raise self._error(f"unknown name {token}")


# -- running -----------------------------------------------------------------------------------


@dataclass
class _Task:
    """One hook of one run (lakeFS's Task) and what happened when it ran."""

    hook_run_id: str
    action: Action
    hook: ActionHook
    runnable: RunnableHook
    started: float | None = None  # None: skipped
    ended: float | None = None
    output: str = ""
    error: str | None = None
    action_failed: bool = False  # the error wraps lakeFS's ErrActionFailed (the hook ran)

    def record(self) -> HookRunRecord:
        """The hook run as lakeFS lists it: a skipped hook has Go's zero times."""
        if self.started is None or self.ended is None:
            times, status = (GO_ZERO_TIME, GO_ZERO_TIME), "skipped"
        else:
            times, status = (self.started, self.ended), "failed" if self.error else "completed"
        hook_ids = (self.hook_run_id, self.action.name, self.hook.id)
        return HookRunRecord(*hook_ids, *times, status, self.output)


_ABORT_ERRORS: dict[int, type[LakeFSError]] = {
    PreconditionFailedError.status_code: PreconditionFailedError,
    NotFoundError.status_code: NotFoundError,
}


def hook_abort_error(event_type: str, run_id: str, error: ActionError) -> LakeFSError:
    """graveler's HookAbortError text with the status lakeFS's controller answers for it."""
    error_class = _ABORT_ERRORS.get(error.status_code, ActionConfigError)
    return error_class(f"{event_type} hook aborted, run id '{run_id}': {error}")


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
        # Go's default client: follows redirects (at most 10), asks for gzip.
        self.http = http_client or httpx.Client(
            follow_redirects=True, max_redirects=MAX_REDIRECTS, headers={"Accept-Encoding": "gzip"}
        )
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lakefs-post-hook")
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()

    def run_pre(self, record: HookRecord) -> str:
        """Run pre-* hooks synchronously; raise the LakeFSError lakeFS answers on a failure."""
        run_id = new_run_id()
        try:
            self.run(record, run_id=run_id)
        except ActionError as exc:
            raise hook_abort_error(record.event_type, run_id, exc) from exc
        return run_id

    def run_post(self, record: HookRecord) -> None:
        """Run post-* hooks in the background, as lakeFS does; failures are only logged.

        A post-commit first gives its pre-commit run the new commit id, synchronously, as
        lakeFS's PostCommitHook does (its pre-merge runs carry the merge commit already)."""
        if record.event_type in {"post-commit", "post-revert"} and record.pre_run_id:
            self.store.set_run_commit(record.repository_id, record.pre_run_id, record.commit_id)
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
        """lakeFS's LoadActions: every entry directly under ``_lakefs_actions/`` at
        ``source_ref``, parsed and validated; raise ActionError naming every bad file."""
        errors: list[str] = []
        not_found = False
        actions: list[Action] = []
        for path, entry in self._action_entries(repo, source_ref):
            if entry is None:  # a sub-folder: lakeFS lists it and then fails to read it
                errors.append(f"loading file {path}: get action file metadata {path}: not found")
                not_found = True
                continue
            try:
                actions.append(parse_action(self.store.read_blob(entry.checksum)))
            except ActionError as exc:
                errors.append(f"parsing file {path}: {exc}")
        if errors:
            raise ActionError(error_list(errors), status_code=404 if not_found else 500)
        names: set[str] = set()
        for action in actions:
            if action.name in names:
                raise ActionError(f"action name '{action.name}' already loaded: {_INVALID_ACTION}")
            names.add(action.name)
        return actions

    def _action_entries(self, repo: str, ref: str) -> list[tuple[str, ObjectEntry | None]]:
        entries: list[tuple[str, ObjectEntry | None]] = []
        after: str | None = None
        while True:
            page = self.store.list_objects(
                repo, ref, prefix=ACTIONS_PREFIX, delimiter="/", after=after, amount=1000
            )
            entries += page.results
            if not page.has_more:
                return entries
            after = page.next_offset

    def run(self, record: HookRecord, *, run_id: str) -> None:
        """lakeFS's StoreService.Run: load, match, build, run, record; raise ActionError."""
        actions = [
            a
            for a in self.load_actions(record.repository_id, record.source_ref)
            if a.matches(record.event_type, record.branch_id)
        ]
        task_groups = [group for group in self._build_tasks(actions) if group]
        if not task_groups:
            return
        with ThreadPoolExecutor(len(task_groups), thread_name_prefix="lakefs-action") as pool:
            futures = [pool.submit(self._run_action, record, group) for group in task_groups]
            # go-multierror lists the actions' errors in the order they ended.
            failures = [f.result() for f in as_completed(futures)]
        self._save_run(record, run_id, task_groups)
        failed = [task for task in failures if task is not None]
        if failed:
            action_failed = any(task.action_failed for task in failed)
            raise ActionError(
                error_list([task.error or "" for task in failed]),
                status_code=412 if action_failed else 500,
            )

    def _build_tasks(self, actions: list[Action]) -> list[list[_Task]]:
        """lakeFS's allocateTasks: build every hook before any runs; raise ActionError."""
        groups: list[list[_Task]] = []
        for action_index, action in enumerate(actions):
            group: list[_Task] = []
            for hook_index, hook in enumerate(action.hooks):
                runnable: RunnableHook
                if hook.type in RUN_BY_THIS_SERVER:
                    runnable = Webhook.build(hook, action, env=self.env, http=self.http)
                else:
                    runnable = UnsupportedHook.build(hook, env=self.env)
                hook_run_id = f"{action_index:04d}_{hook_index:04d}"  # lakeFS's NewHookRunID
                group.append(_Task(hook_run_id, action, hook, runnable))
            groups.append(group)
        return groups

    def _run_action(self, record: HookRecord, tasks: list[_Task]) -> _Task | None:
        """The hooks of one action in order; return the first failed task (None: all passed)."""
        first_failure: _Task | None = None
        for task in tasks:
            error: str | None = None
            try:
                due = evaluate_if(task.hook.if_expression, action_failed=first_failure is not None)
            except IfExpressionError as exc:
                error, due = str(exc), False
            if error is None and not due:
                continue  # skipped: no times, no output
            task.started = time.time()
            output = io.StringIO()
            if error is None:
                try:
                    task.runnable.run(record, output)
                except HookRunError as exc:
                    error, task.action_failed = f"{_ACTION_FAILED}: {exc}", True
            task.ended = time.time()
            if error is not None:
                output.write(f"Error: {error}\n")
                task.error = (
                    f"hook run id '{task.hook_run_id}' failed on action '{task.action.name}' "
                    f"hook '{task.hook.id}': {error}"
                )
                first_failure = first_failure or task
            task.output = output.getvalue()
        return first_failure

    def _save_run(self, record: HookRecord, run_id: str, task_groups: list[list[_Task]]) -> None:
        """lakeFS's buildRunManifestFromTasks: the run spans its hooks' times."""
        tasks = [task for group in task_groups for task in group]
        started = [t.started for t in tasks if t.started is not None]
        ended = [t.ended for t in tasks if t.ended is not None]
        status = "failed" if any(t.error for t in tasks) else "completed"
        self.store.save_action_run(
            record.repository_id,
            ActionRunRecord(
                run_id,
                record.branch_id,
                record.commit_id,
                record.source_ref,
                record.event_type,
                min(started, default=GO_ZERO_TIME),
                max(ended, default=GO_ZERO_TIME),
                status,
            ),
            [task.record() for task in tasks],
        )
