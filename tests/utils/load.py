"""A small threaded load generator for tests that must see every answer (not a benchmark)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.utils.waiting import eventually


@dataclass
class LoadResult:
    """What the workers saw: answers by model version, and every failure spelled out."""

    versions: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    sequence: list[str] = field(default_factory=list)
    """Model versions in the order one worker (the first) received them."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def answered(self) -> int:
        return sum(self.versions.values())


class PredictLoad:
    """``workers`` threads POSTing one record to ``/v1/predict`` until stopped."""

    def __init__(self, url: str, record: dict[str, Any], *, workers: int = 8) -> None:
        self.url = f"{url}/v1/predict"
        self.record = record
        self.result = LoadResult()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(index,), daemon=True)
            for index in range(workers)
        ]

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for_answers(self, version: str, *, count: int) -> None:
        """Wait until the first worker has had ``count`` answers from model ``version`` (the load
        is really running on it), with a generous deadline."""

        def enough() -> bool:
            with self.result.lock:
                return self.result.sequence.count(version) >= count

        eventually(enough, what=f"{count} answers from model version {version}")

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _work(self, index: int) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json=self.record)
                    version = response.json()["model"]["version"] if response.is_success else None
                    problem = None if version else f"{response.status_code}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as error:
                    version, problem = None, f"{type(error).__name__}: {error}"
                with self.result.lock:
                    if version is None:
                        self.result.failures.append(str(problem))
                    else:
                        self.result.versions[version] += 1
                        if index == 0:
                            self.result.sequence.append(version)
