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
