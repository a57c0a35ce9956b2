"""Headless Chromium (Debian's ``chromium``) opening a page with no network but loopback.

Every host name but 127.0.0.1 fails to resolve (``--host-resolver-rules``), so a page that needs
a CDN stays blank here as it would on a machine without internet. The browser's net log says
what the page asked for, so a test can also show that it asked nothing of any other host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

BINARY = "chromium"
OFFLINE = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
"""Resolver rules: no name resolves, loopback is reached as usual."""
TIMEOUT_SECONDS = 120.0
WINDOW = "1280,2000"
_QUIET = (
    # The page is ours and the machine a test host: no sandbox (it refuses to start as root
    # inside a container), no first-run screens, none of the browser's own update or sync calls.
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)
_BROWSER_OWN = "not an origin"
"""The net log's initiator of the requests the browser makes for itself (not for the page)."""
_LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def chromium() -> str:
    """The path of Debian's ``chromium``, or skip the test naming the package to install."""
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"`{BINARY}` is not installed (Debian package chromium: `make system-deps`)")
    return path


@dataclass(frozen=True)
class OpenedPage:
    """A page as headless Chromium left it, offline."""

    dom: str
    """The document after its scripts ran (``--dump-dom``)."""
    requested: list[str]
    """Every URL the page asked for, itself first (the browser's own calls left out)."""
    screenshot: Path | None
    """Where its screenshot is, if one was asked for."""

    def foreign(self) -> list[str]:
        """Requested URLs that are neither on loopback nor inside the machine (``file:``)."""
        return [
            url
            for url in self.requested
            if urlsplit(url).scheme not in _LOCAL_SCHEMES
            and urlsplit(url).hostname not in _LOOPBACK
        ]


def open_offline(
    url: str, *, folder: Path, screenshot: bool = True, budget_ms: int = 10_000
) -> OpenedPage:
    """Open ``url`` in headless Chromium that reaches nothing but loopback, let its scripts run
    for ``budget_ms`` of virtual time, and return the document they left; with ``screenshot``,
    a second run photographs the page into ``folder`` (a person can look at it)."""
    binary = chromium()
    folder.mkdir(parents=True, exist_ok=True)
    net_log = folder / "net-log.json"
    dumped = _run(
        binary,
        url,
        folder=folder / "profile-dom",
        budget_ms=budget_ms,
        action=["--dump-dom", f"--log-net-log={net_log}"],
    )
    picture = None
    if screenshot:
        picture = folder / "page.png"
        _run(
            binary,
            url,
            folder=folder / "profile-screenshot",
            budget_ms=budget_ms,
            action=[f"--screenshot={picture}", f"--window-size={WINDOW}"],
        )
        assert picture.is_file(), f"Chromium wrote no screenshot of {url}"
    return OpenedPage(dom=dumped, requested=page_requests(net_log), screenshot=picture)


def _run(binary: str, url: str, *, folder: Path, budget_ms: int, action: list[str]) -> str:
    argv = [
        binary,
        "--headless=new",
        *_QUIET,
        f"--user-data-dir={folder}",  # its own profile: runs never share state
        f"--host-resolver-rules={OFFLINE}",
        f"--virtual-time-budget={budget_ms}",
        *action,
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )
    assert done.returncode == 0, f"Chromium failed on {url} ({done.returncode}): {done.stderr}"
    return done.stdout


def page_requests(net_log: Path) -> list[str]:
    """The URLs a page asked for, in order, from Chromium's net log (``--log-net-log``): each
    request started for the page itself (the main frame, then what it loads), not those the
    browser makes for its own sake (update checks)."""
    log: dict[str, Any] = json.loads(net_log.read_text())
    started = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != started or "url" not in params:
            continue
        if params.get("request_type") == "main frame" or params.get("initiator") != _BROWSER_OWN:
            requested.append(params["url"])
    return requested


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in {"script", "style"}

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in {"script", "style"}

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def visible_text(dom: str) -> str:
    """The document's text outside its scripts and styles: what was drawn, not the data a
    script carries (a report's figures sit in a script until its code renders them)."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(parser.parts)
