"""A copied cell never outlives its source: the TTL it is written with keeps ageing until the
write is sent -- queued behind other writes, sent again after a timeout -- and a cell that expired
on the way is not written at all (TTL 0 would mean no TTL). A fake session and clock at the
driver seam; the real servers' side is in tests/e2e/test_meterhub_dag.py (every cell's expiry)."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra import WriteTimeout

from tenant_migration.cassandra import pipeline
from tenant_migration.cassandra.copy import ChunkCopier, CopyOptions, Writer

OPTS = CopyOptions(backoff_base=0.0, max_attempts=3, concurrency=4)


class _Future:
    def __init__(self, fail: BaseException | None) -> None:
        self.fail = fail

    def add_callbacks(self, ok: Any, err: Any, errback_args: tuple[Any, ...] = ()) -> None:
        if self.fail is None:
            ok([])
        else:
            err(self.fail, *errback_args)


class _Session:
    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[Any, Any]] = []
        self.failures = failures

    def execute_async(self, request: Any, params: Any = None) -> _Future:
        self.sent.append((request, params))
        if self.failures:
            self.failures -= 1
            return _Future(WriteTimeout("timed out", write_type=0))
        return _Future(None)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(pipeline.time, "monotonic", c)
    return c


def _last_ttl(stmt: Any, params: Any, extra: int) -> tuple[Any, Any] | None:
    ttl = params[-1]
    return None if ttl <= extra else (stmt, (*params[:-1], ttl - extra))


def test_a_write_sent_later_than_its_ttl_was_computed_loses_the_seconds_between(clock: _Clock) -> None:
    session = _Session()
    writer = Writer(session, OPTS, aging=_last_ttl)  # type: ignore[arg-type]
    asked = clock.now
    clock.now += 0.4
    elapsed = pipeline.ttl_age(asked)  # what the copier took off at the row: ceil(0.4) + 1
    assert elapsed == 2
    writer.submit("insert", ("k", 100 - elapsed), asked_at=asked, elapsed=elapsed)
    clock.now += 3.0  # queued behind other writes: sent 3.4 s after the read was asked for
    writer.submit("insert", ("k2", 100 - elapsed), asked_at=asked, elapsed=elapsed)
    writer.drain()
    assert session.sent == [("insert", ("k", 98)), ("insert", ("k2", 95))]  # ceil(3.4) + 1 = 5 in all


def test_a_retry_is_aged_again_and_an_expired_write_is_never_sent(clock: _Clock) -> None:
    session = _Session(failures=1)
    writer = Writer(session, OPTS, aging=_last_ttl)  # type: ignore[arg-type]
    asked = clock.now
    writer.submit("insert", ("k", 10 - 1), asked_at=asked, elapsed=1)
    clock.now += 4.5  # the retry goes out 4.5 s later: ceil(4.5) + 1 = 6 in all, 5 more
    writer.drain()
    assert session.sent == [("insert", ("k", 9)), ("insert", ("k", 4))]
    writer.submit("insert", ("gone", 9), asked_at=asked, elapsed=1)  # 9 s left at the read, 6 s ago
    writer.submit("insert", ("gone", 3), asked_at=asked - 20, elapsed=1)
    writer.drain()
    assert writer.expired == 1 and session.sent[-1] == ("insert", ("gone", 4))
    assert all(p[-1] > 0 for _, p in session.sent), "TTL 0 is no TTL: never sent for a cell that has one"


def _copier() -> ChunkCopier:
    copier = object.__new__(ChunkCopier)
    copier._ttl_at = {}
    copier._set_of_add = {}
    return copier


def test_a_list_whose_first_run_expired_is_still_written_whole() -> None:
    """``SET l = [run 1]`` then ``l = l + [run 2]``: when run 1 expired on the way, run 2 becomes
    the whole-list write, so that older elements on the target are still replaced, not appended to."""
    copier = _copier()
    set_l, add_l, insert = object(), object(), object()
    copier._ttl_at.update({id(set_l): 1, id(add_l): 1, id(insert): -1})
    copier._set_of_add[id(add_l)] = set_l
    batch = [(set_l, (77, 3, ["a"], "k")), (add_l, (77, 50, ["b", "c"], "k"))]
    assert copier._age(batch, None, 1) == ([(set_l, (77, 2, ["a"], "k")), (add_l, (77, 49, ["b", "c"], "k"))], None)
    assert copier._age(batch, None, 3) == ([(set_l, (77, 47, ["b", "c"], "k"))], None)
    assert copier._age(batch, None, 60) is None
    assert copier._age(insert, ("k", 1.5, 77, 0), 60) == (insert, ("k", 1.5, 77, 0)), "no TTL stays no TTL"
    assert copier._age([(insert, ("k", 1, 77, 5)), (insert, ("j", 2, 77, 9))], None, 6) == \
        ([(insert, ("j", 2, 77, 3))], None)

