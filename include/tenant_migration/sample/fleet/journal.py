"""An append-only journal of every write the fleet attempts, so loss can be proven afterwards:
each line is one attempt with its id, time, endpoint, outcome and what was written.

Invariant: every attempt is journaled exactly once, acknowledged or not, including attempts that
failed before reaching a server (DNS, connection) and attempts still in flight at stop (the fleet
waits for their callbacks). A write missing from the journal could hide a loss.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class WriteRecord:
    write_id: str
    kind: str  # datapoint | app | registration | device_registration
    started: float  # unix seconds
    endpoint: str  # the DNS answer used (the deployment's endpoint name); "?" when resolution failed
    acked: bool
    latency_ms: float
    error: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    client: str = ""  # which client's DNS cache answered (devices and apps each have their own)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def append(self, record: WriteRecord) -> None:
        line = json.dumps(asdict(record), default=str)
        with self._lock:
            self._fh.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    @staticmethod
    def read(path: Path) -> Iterator[WriteRecord]:
        with path.open() as fh:
            for line in fh:
                if line.strip():
                    yield WriteRecord(**json.loads(line))
