"""The copy's I/O machinery, shared by the copy, the catch-up and the fingerprints: paged reads of
many partitions with bounded requests in flight, asynchronous writes under a semaphore
(backpressure), retries with exponential backoff and full jitter, the tuning options and the
per-table counters (``cassandra.copy``'s module note has the design)."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tenant_migration.cassandra.plan import ReadGroup
from tenant_migration.cassandra.ratelimit import TokenBucket

if TYPE_CHECKING:
    from cassandra.cluster import Session


log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- options, stats


@dataclass(frozen=True)
class CopyOptions:
    """Tuning of one copier process. ``rows_per_second`` is for the whole run (split between
    processes); ``batch_rows`` > 1 groups a partition's rows into UNLOGGED batches."""

    concurrency: int = 64
    read_concurrency: int = 16
    fetch_size: int = 2000
    batch_rows: int = 1
    rows_per_second: float | None = None
    processes: int = 1
    max_attempts: int = 8
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    in_limit: int = 64


@dataclass
class CopyStats:
    table: str
    partitions: int  # planned partition keys
    rows: int
    cells: int
    seconds: float
    nonempty: int = 0  # partitions that held at least one live row
    writes: int = 0  # requests sent to the target (a batch counts once)
    skipped_expired: int = 0  # cells whose TTL ran out between read and write
    skipped_older: int = 0  # cells older than ``min_writetime`` (catch-up passes)
    retries: int = 0
    throttled_seconds: float = 0.0
    late_cells: int = 0  # live cells read with a writetime after ``watch_after`` (the drain's watch)
    newest_writetime: int | None = None  # the newest of those (microseconds), None when none

    def add(self, other: CopyStats) -> None:
        for name in ("partitions", "rows", "cells", "nonempty", "writes", "skipped_expired", "skipped_older",
                     "retries", "late_cells"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds
        self.throttled_seconds += other.throttled_seconds
        if other.newest_writetime is not None:
            self.newest_writetime = max(self.newest_writetime or other.newest_writetime, other.newest_writetime)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- retries


def _retryable() -> tuple[type[BaseException], ...]:
    from cassandra import OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
    from cassandra.protocol import OverloadedErrorMessage

    return (ReadTimeout, WriteTimeout, OperationTimedOut, Unavailable, OverloadedErrorMessage)


class _ServerFailure(RuntimeError):
    """The server answered a read with an exception of its own (``ServerError``), on every host."""


def _server_failure(result: Callable[[], Any]) -> Any:
    """``result()``, with a server-side exception raised as ``_ServerFailure``: Cassandra 5.0's
    ``mask_hash`` shares one digest between a node's threads, and besides wrong hashes it
    sometimes throws (``ArrayIndexOutOfBoundsException: arraycopy: last destination index 66 out
    of bounds for byte[64]``), which the driver reports as ``NoHostAvailable`` of ``ServerError``."""
    from cassandra.cluster import NoHostAvailable
    from cassandra.protocol import ServerError

    try:
        return result()
    except ServerError as exc:
        raise _ServerFailure(str(exc)) from exc
    except NoHostAvailable as exc:
        if exc.errors and all(isinstance(e, ServerError) for e in exc.errors.values()):
            raise _ServerFailure(str(exc)) from exc
        raise


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: spreads retries of many requests that failed together."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


class RetryExhausted(RuntimeError):
    """A request kept failing with retryable errors."""


# ----------------------------------------------------------------------------------- reader


def _tuple_profile(session: Session) -> Any:
    """The session's default profile with plain tuples for rows (named tuples cost CPU per row)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT
    from cassandra.query import tuple_factory

    return session.execution_profile_clone_update(EXEC_PROFILE_DEFAULT, row_factory=tuple_factory)


class Page(list[tuple[Any, ...]]):
    """A page of rows and the ``time.monotonic()`` at which its request was sent."""

    def __init__(self, rows: Iterable[tuple[Any, ...]], asked_at: float) -> None:
        super().__init__(rows)
        self.asked_at = asked_at


def iter_pages(
    session: Session,
    stmt: Any | tuple[Any, ...],
    groups: Iterable[ReadGroup],
    *,
    read_concurrency: int,
    fetch_size: int | None,
    opts: CopyOptions,
    limiter: TokenBucket | None = None,
    on_retry: Callable[[], None] | None = None,
    retry_server_errors: bool = False,
) -> Iterator[Page]:
    """Pages of rows of every group's partitions, pages in no particular order; each page knows
    when its request was sent (``Page.asked_at``, ``time.monotonic()``): the server read its TTLs no
    earlier, however long the page then waited behind the pages before it.

    At most ``read_concurrency`` requests are in flight (``fetch_size=None``: unpaged, one answer
    per request -- for reads whose answer is small); a page is requested again from its paging
    state when it fails with a retryable error (``retry_server_errors``: also when the server
    failed with an exception of its own, for reads that are safe to repeat).

    ``stmt`` may be a tuple of statements: group ``i`` is read with ``stmt[i % len(stmt)]`` (its
    next pages and its retries too), and a group is not sent while another request with its
    statement is in flight: no two requests in flight ever use the same statement
    (``fingerprint.spelled_statements``; with ``read_concurrency <= len(stmt)`` that costs no
    concurrency but a paging group's turn).
    """
    retryable = _retryable() + ((_ServerFailure,) if retry_server_errors else ())
    profile = _tuple_profile(session)
    stmts = stmt if isinstance(stmt, tuple) else (stmt,)
    pending: deque[tuple[Any, int, tuple[Any, ...], Any, int, float]] = deque()
    busy: Counter[int] = Counter()  # statements in flight (by index), when there are several
    source = enumerate(groups)
    upcoming = next(source, None)

    def submit(index: int, params: tuple[Any, ...], paging_state: Any, attempt: int) -> None:
        bound = stmts[index % len(stmts)].bind(params)
        bound.fetch_size = fetch_size
        asked_at = time.monotonic()
        fut = session.execute_async(bound, execution_profile=profile, paging_state=paging_state)
        busy[index % len(stmts)] += 1
        pending.append((fut, index, params, paging_state, attempt, asked_at))

    def refill() -> None:
        nonlocal upcoming
        while len(pending) < read_concurrency and upcoming is not None:
            index, group = upcoming
            if len(stmts) > 1 and busy[index % len(stmts)]:
                return  # its statement is in flight: its turn comes once that one answered
            submit(index, group.values, None, 0)
            upcoming = next(source, None)

    refill()
    while pending:
        fut, index, params, paging_state, attempt, asked_at = pending.popleft()
        busy[index % len(stmts)] -= 1  # nothing is sent before this one has answered (below)
        try:
            rs = _server_failure(fut.result) if retry_server_errors else fut.result()
        except retryable as exc:
            if attempt + 1 >= opts.max_attempts:
                raise RetryExhausted(f"read failed {attempt + 1} times: {type(exc).__name__}: {exc}") from exc
            if on_retry is not None:
                on_retry()
            time.sleep(backoff_delay(attempt, opts.backoff_base, opts.backoff_max))
            submit(index, params, paging_state, attempt + 1)
            continue
        rows = Page(rs.current_rows, asked_at)
        if rs.paging_state is not None:
            submit(index, params, rs.paging_state, 0)
        refill()
        if limiter is not None:
            limiter.acquire(len(rows))
        yield rows


# ----------------------------------------------------------------------------------- writer


def ttl_age(asked_at: float) -> int:
    """Seconds to take off a TTL that the server read after ``asked_at`` (``time.monotonic()``) for a
    write sent now. TTLs are whole seconds of each server's clock and the target counts its own
    from the second it applies the write: the whole seconds begun since the request, and one more,
    keep the copy from outliving its source (seen without the one: target 7200 s, source 7199 s)."""
    return math.ceil(time.monotonic() - asked_at) + 1


Aging = Callable[[Any, Any, int], "tuple[Any, Any] | None"]


class Writer:
    """Asynchronous writes with bounded in-flight requests and retries (see the module note).

    A write may carry TTLs that keep ageing until it is sent (``asked_at``: when the read that gave
    them was sent; ``elapsed``: the seconds already taken off): at each send, a retry's too, the
    seconds since then are taken off by ``aging(stmt, params, extra)``, which returns the write to
    send or None when every cell of it has expired in flight (``expired`` counts them; never sent
    with TTL 0, which would mean no TTL at all). A ``stmt`` that is a list of (statement, params) is
    sent as one UNLOGGED batch."""

    def __init__(self, session: Session, opts: CopyOptions, aging: Aging | None = None) -> None:
        self.session = session
        self.opts = opts
        self.aging = aging
        self._permits = threading.Semaphore(opts.concurrency)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._retry: deque[tuple[float, Any, Any, int, float | None, int]] = deque()
        self._errors: list[BaseException] = []
        self._retryable = _retryable()
        self.sent = 0
        self.retries = 0
        self.expired = 0

    def submit(self, stmt: Any, params: Any = None, asked_at: float | None = None, elapsed: int = 0) -> None:
        self._resubmit_due()
        if self._errors:
            raise self._errors[0]
        self._permits.acquire()
        with self._lock:
            self._in_flight += 1
        self._send(stmt, params, 0, asked_at, elapsed)

    def _send(self, stmt: Any, params: Any, attempt: int, asked_at: float | None, elapsed: int) -> None:
        if asked_at is not None and self.aging is not None:
            extra = ttl_age(asked_at) - elapsed
            if extra > 0:
                aged = self.aging(stmt, params, extra)
                if aged is None:
                    self.expired += 1
                    self._release()
                    return
                (stmt, params), elapsed = aged, elapsed + extra
        self.sent += 1
        request = stmt
        if isinstance(stmt, list):
            from cassandra.query import BatchStatement, BatchType

            request = BatchStatement(batch_type=BatchType.UNLOGGED)
            for one, args in stmt:
                request.add(one, args)
        fut = self.session.execute_async(request, None if isinstance(stmt, list) else params)
        fut.add_callbacks(self._ok, self._err, errback_args=(stmt, params, attempt, asked_at, elapsed))

    def _ok(self, _rows: Any) -> None:
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()
        self._permits.release()

    def _err(self, exc: BaseException, stmt: Any, params: Any, attempt: int, asked_at: float | None,
             elapsed: int) -> None:
        # Runs on the driver's I/O thread: never sleep here; park the write for the caller thread.
        if isinstance(exc, self._retryable) and attempt + 1 < self.opts.max_attempts:
            due = time.monotonic() + backoff_delay(attempt, self.opts.backoff_base, self.opts.backoff_max)
            with self._lock:
                self._retry.append((due, stmt, params, attempt + 1, asked_at, elapsed))
                self._idle.notify_all()
            return
        with self._lock:
            self._errors.append(exc if attempt == 0 else
                                RetryExhausted(f"write failed {attempt + 1} times: {type(exc).__name__}: {exc}"))
        self._release()

    def _resubmit_due(self) -> None:
        if not self._retry:
            return
        now = time.monotonic()
        due: list[tuple[float, Any, Any, int, float | None, int]] = []
        with self._lock:
            keep: deque[tuple[float, Any, Any, int, float | None, int]] = deque()
            for item in self._retry:
                (due if item[0] <= now else keep).append(item)
            self._retry = keep
        for _, stmt, params, attempt, asked_at, elapsed in due:
            self.retries += 1
            self._send(stmt, params, attempt, asked_at, elapsed)

    def drain(self) -> None:
        """Wait until every write is acknowledged (retrying as needed); raise the first failure."""
        while True:
            self._resubmit_due()
            with self._lock:
                if self._in_flight == 0:
                    break
                self._idle.wait(timeout=0.05)
        if self._errors:
            raise self._errors[0]
