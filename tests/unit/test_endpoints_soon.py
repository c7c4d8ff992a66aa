"""``Endpoints.cassandra_sessions_soon``: both clusters connect in the background while the caller
works, and are shut down on the way out whatever happened. Fakes at the session seam: no server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tenant_migration.endpoints import Endpoints


class FakeCluster:
    def __init__(self, name: str, log: list[str], *, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.name, self.log, self.fail, self.gate = name, log, fail, gate

    @contextmanager
    def session(self, request_timeout: float = 30.0) -> Iterator[str]:
        if self.gate is not None:
            assert self.gate.wait(5), "the caller never got on with its own work"
        if self.fail:
            raise ConnectionError(f"cannot reach Cassandra {self.name}")
        self.log.append(f"open {self.name}")
        try:
            yield f"session-{self.name}"
        finally:
            self.log.append(f"close {self.name}")


def _endpoints(source: Any, target: Any) -> Endpoints:
    return Endpoints(replica=None, replica_control=None, source_operator=None, source_primary=None,  # type: ignore[arg-type]
                     source_cdc=None, target=None, cassandra_source=source, cassandra_target=target,  # type: ignore[arg-type]
                     aws=None)  # type: ignore[arg-type]


def test_the_caller_works_while_both_connect_and_both_are_shut_down_after() -> None:
    log: list[str] = []
    working = threading.Event()  # the connects wait for the caller's own work to have begun
    ep = _endpoints(FakeCluster("source", log, gate=working), FakeCluster("target", log, gate=working))
    with ep.cassandra_sessions_soon() as sessions:
        assert not sessions.done()
        working.set()
        assert sessions.result(timeout=5) == ("session-source", "session-target")
        assert sorted(log) == ["open source", "open target"]
    assert sorted(log[2:]) == ["close source", "close target"]


def test_an_error_in_the_body_still_shuts_both_down() -> None:
    log: list[str] = []
    ep = _endpoints(FakeCluster("source", log), FakeCluster("target", log))
    with pytest.raises(RuntimeError, match="postgres went away"), ep.cassandra_sessions_soon():
        raise RuntimeError("postgres went away")
    assert sorted(log) == ["close source", "close target", "open source", "open target"]


def test_a_cluster_that_cannot_be_reached_raises_where_the_sessions_are_taken() -> None:
    log: list[str] = []
    ep = _endpoints(FakeCluster("source", log, fail=True), FakeCluster("target", log))
    with pytest.raises(ConnectionError, match="cannot reach Cassandra source"), \
            ep.cassandra_sessions_soon() as sessions:
        sessions.result()
    assert log == ["open target", "close target"]  # the one that did connect is not left open


def test_a_connect_error_nobody_asked_for_does_not_mask_the_body() -> None:
    """The body failed first (say PostgreSQL): its error is the one raised, and nothing leaks."""
    log: list[str] = []
    ep = _endpoints(FakeCluster("source", log), FakeCluster("target", log, fail=True))
    with pytest.raises(KeyError), ep.cassandra_sessions_soon():
        time.sleep(0.01)
        raise KeyError("run not found")
    assert log == ["open source", "close source"]
