"""supervisord's event listener for the laptop stack: a service that keeps crashing after it
started is stopped, not restarted for ever.

supervisord limits restarts only for a failed *start* (a program that dies within ``startsecs``:
``startretries`` attempts with a growing backoff, then ``FATAL``). A program that ran longer and
then died is restarted at once, every time, without limit. This listener, run by supervisord
itself (``[eventlistener:watchdog]``, its documented extension point), counts each service's exits
from RUNNING; once a service has exited ``limit`` times within ``window`` seconds it is stopped
through supervisord's XML-RPC interface and the decision is written to ``gave-up.json`` in the
supervisor folder, where `lakeloop status` reads it and shows the service's last log lines.
`lakeloop up` starts such a service again.

Run as ``python -m tooling.watchdog FOLDER LIMIT WINDOW`` by supervisord only: its standard
input and output are supervisord's event protocol.
"""

from __future__ import annotations

import json
import os
import sys
import time
import xmlrpc.client
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor import childutils

from lakeloop.stores.objects import write_atomically

GAVE_UP_FILE = "gave-up.json"
STOPPABLE = ("STARTING", "RUNNING", "BACKOFF")


def gave_up(folder: Path) -> dict[str, dict[str, Any]]:
    """The services the watchdog stopped, by name: how often they crashed, within how long, when."""
    path = folder / GAVE_UP_FILE
    try:
        found: dict[str, dict[str, Any]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found


def forget(folder: Path, names: list[str]) -> None:
    """Clear the watchdog's decision on ``names`` (`lakeloop up` starts them again)."""
    record = gave_up(folder)
    if any(name in record for name in names):
        _write(folder, {name: entry for name, entry in record.items() if name not in names})


def _write(folder: Path, record: dict[str, dict[str, Any]]) -> None:
    write_atomically(folder / GAVE_UP_FILE, json.dumps(record, indent=2).encode())


class Watchdog:
    """Exits from RUNNING per service within the last ``window`` seconds."""

    def __init__(self, folder: Path, *, limit: int, window: float, rpc: Any) -> None:
        self.folder, self.limit, self.window, self.rpc = folder, limit, window, rpc
        self.exits: dict[str, deque[float]] = {}

    def exited(self, name: str, *, now: float) -> bool:
        """Count an exit of ``name``; stop it and record why once it reached the limit. Whether
        it was stopped."""
        recent = self.exits.setdefault(name, deque())
        recent.append(now)
        while recent and recent[0] < now - self.window:
            recent.popleft()
        if len(recent) < self.limit:
            return False
        recent.clear()  # started again by `lakeloop up`, it gets a whole new allowance
        self._stop(name)
        record = gave_up(self.folder)
        record[name] = {
            "crashes": self.limit,
            "window_seconds": self.window,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write(self.folder, record)
        # stdout is supervisord's event protocol: what the watchdog says goes to its stderr log
        print(f"{name}: exited {self.limit} times in {self.window:.0f} s; stopped", file=sys.stderr)
        return True

    def _stop(self, name: str) -> None:
        """Stop ``name``: supervisord may not have started it again yet when the event arrives."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.rpc.supervisor.getProcessInfo(name)["statename"]
            if state in STOPPABLE:
                try:
                    self.rpc.supervisor.stopProcess(name, False)
                    return
                except xmlrpc.client.Fault:  # it changed state meanwhile
                    pass
            time.sleep(0.1)


def main() -> None:
    folder, limit, window = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    watchdog = Watchdog(
        folder, limit=limit, window=window, rpc=childutils.getRPCInterface(os.environ)
    )
    while True:
        childutils.listener.ready(sys.stdout)
        line = sys.stdin.readline()
        if not line:  # supervisord is gone
            return
        headers = childutils.get_headers(line)
        payload = sys.stdin.read(int(headers["len"]))
        if headers.get("eventname") == "PROCESS_STATE_EXITED":
            fields = childutils.get_headers(payload.split("\n", 1)[0])
            if fields.get("from_state") == "RUNNING":
                watchdog.exited(fields["processname"], now=time.monotonic())
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
