"""Reads that the server fails with an exception of its own (Cassandra 5.0's racy ``mask_hash``
throws ArrayIndexOutOfBoundsException now and then): the fingerprint reads ask again, other reads
do not, and a host that cannot be reached is never taken for such a failure. A fake session at
the driver seam: the real race is not reproducible on demand."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable
from cassandra.protocol import ServerError

from tenant_migration.cassandra.copy import CopyOptions, iter_pages
from tenant_migration.cassandra.plan import ReadGroup

OPTS = CopyOptions(backoff_base=0.0, max_attempts=3)
RACE = "java.lang.ArrayIndexOutOfBoundsException: arraycopy: last destination index 66 out of bounds for byte[64]"


class _Future:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def result(self) -> Any:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class _Session:
    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.requests = 0

    def execution_profile_clone_update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def execute_async(self, bound: Any, execution_profile: Any = None, paging_state: Any = None) -> _Future:
        self.requests += 1
        return _Future(self.outcomes.pop(0))


class _Statement:
    def bind(self, params: Any) -> SimpleNamespace:
        return SimpleNamespace(params=params, fetch_size=None)


def _rows(*rows: tuple[Any, ...]) -> SimpleNamespace:
    return SimpleNamespace(current_rows=list(rows), paging_state=None)


def _server_error_everywhere() -> NoHostAvailable:
    return NoHostAvailable("Unable to complete the operation against any hosts",
                           {"127.0.0.2:9042": ServerError(0, RACE, None)})


def _read(session: _Session, retry_server_errors: bool) -> list[list[tuple[Any, ...]]]:
    return list(iter_pages(session, _Statement(), [ReadGroup(([1],))], read_concurrency=1, fetch_size=10,
                           opts=OPTS, retry_server_errors=retry_server_errors))


def test_a_fingerprint_read_failed_by_the_server_is_asked_again() -> None:
    session = _Session(_server_error_everywhere(), _rows((1, 2, 3)))
    assert _read(session, retry_server_errors=True) == [[(1, 2, 3)]]
    assert session.requests == 2


def test_other_reads_fail_on_a_server_error() -> None:
    with pytest.raises(NoHostAvailable, match="Unable to complete"):
        _read(_Session(_server_error_everywhere(), _rows((1,))), retry_server_errors=False)


def test_an_unreachable_host_is_not_a_server_failure() -> None:
    down = NoHostAvailable("Unable to connect", {"127.0.0.2:9042": ConnectionRefusedError(111, "refused")})
    with pytest.raises(NoHostAvailable, match="Unable to connect"):
        _read(_Session(down, _rows((1,))), retry_server_errors=True)


def test_a_server_failure_that_persists_is_reported_after_the_attempts() -> None:
    from tenant_migration.cassandra.copy import RetryExhausted

    session = _Session(*[_server_error_everywhere() for _ in range(OPTS.max_attempts)])
    with pytest.raises(RetryExhausted, match="ArrayIndexOutOfBounds"):
        _read(session, retry_server_errors=True)
    assert session.requests == OPTS.max_attempts


class _Tracking:
    """A session that answers each request only when the reader asks for its result, and records
    which statements were in flight together."""

    def __init__(self, pages: dict[int, list[Any]]) -> None:
        self.pages = pages  # group value -> the pages it answers, in order
        self.in_flight: list[str] = []
        self.overlaps: list[list[str]] = []
        self.sent: list[tuple[str, int]] = []

    def execution_profile_clone_update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def execute_async(self, bound: Any, execution_profile: Any = None, paging_state: Any = None) -> Any:
        session = self
        self.in_flight.append(bound.stmt)
        self.overlaps.append(list(self.in_flight))
        value = bound.params[0][0]
        self.sent.append((bound.stmt, value))

        class _Answer:
            def result(self) -> Any:
                session.in_flight.remove(bound.stmt)
                page = session.pages[value].pop(0)
                return SimpleNamespace(current_rows=[(value, page)],
                                       paging_state=None if not session.pages[value] else "more")
        return _Answer()


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def bind(self, params: Any) -> SimpleNamespace:
        return SimpleNamespace(params=params, fetch_size=None, stmt=self.name)


def test_spelled_statements_never_share_one_in_flight_and_keep_each_groups_statement() -> None:
    """``iter_pages`` with a tuple of statements: group i is read with statement i % n, its next
    page too, and with read_concurrency <= n no two requests in flight use the same statement
    (what keeps ``mask_hash``'s per-algorithm digest from being shared, fingerprint.SPREAD)."""
    session = _Tracking({v: ["p1", "p2"] if v % 4 == 0 else ["p1"] for v in range(10)})
    stmts = tuple(_Named(n) for n in "abc")
    rows = [r for page in iter_pages(session, stmts, [ReadGroup(([v],)) for v in range(10)], read_concurrency=3,
                                     fetch_size=10, opts=OPTS) for r in page]
    assert sorted(rows) == sorted([(v, "p1") for v in range(10)] + [(v, "p2") for v in (0, 4, 8)])
    assert all(stmt == "abc"[v % 3] for stmt, v in session.sent)  # pages follow their group's statement
    assert max(len(o) for o in session.overlaps) == 3
    assert all(len(set(o)) == len(o) for o in session.overlaps)


def test_a_page_fetched_ahead_knows_when_it_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next page is asked for as soon as the one before it answered, and then waits while the
    consumer writes that one: its TTLs were read at the request, not when the consumer takes it
    (the copier subtracts the time since ``asked_at``; seen 6 s too little on a big partition)."""
    from tenant_migration.cassandra import pipeline

    clock = [100.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    first = SimpleNamespace(current_rows=[(1,)], paging_state=b"next")
    session = _Session(first, _rows((2,)))
    pages = iter_pages(session, _Statement(), [ReadGroup(([1],))], read_concurrency=1, fetch_size=1, opts=OPTS)
    page1 = next(pages)
    assert page1 == [(1,)] and page1.asked_at == 100.0
    clock[0] = 106.0  # the consumer took 6 s over the first page; the second was asked for at 100
    page2 = next(pages)
    assert page2 == [(2,)] and page2.asked_at == 100.0
