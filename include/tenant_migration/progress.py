"""Progress in the task logs: the long steps (the copy batches, the catch-ups, the warm-up, the
straggler drain) say every ``every`` seconds (10 by default, never more than 15) how much is done
of how much, at what rate, and when they expect to finish.

A ``Ticker`` is a daemon thread beside the step: it calls a ``read()`` that returns a ``Reading``
and logs one line, even while the step itself is blocked in a long chunk or a slow server call.
The readings come from where the step leaves its evidence -- the ledger (chunk statuses and rows,
the change stream's applied position) -- or from a ``Tally`` the step bumps as it goes, so the
line tells the on-call engineer what is *recorded*, not what a loop believes.

The rate is the current one (over the last ``window`` seconds of readings, so a stall shows as
0/s at once rather than being averaged away); the ETA is the planned work left at that rate.
A read that fails is said in the line and the ticker goes on: progress never fails a step.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from tenant_migration.ledger import Chunk

log = logging.getLogger("tenant_migration.progress")

EVERY_S = 10.0
MAX_EVERY_S = 15.0  # the promise to the operator: a long step is never silent for longer


@dataclass(frozen=True)
class Reading:
    """``done`` of ``planned`` (None: not known) in ``unit``; ``rows`` actually moved so far (a
    second rate); ``note``: the rest of the line (the run's whole store, the pass, a warning)."""

    done: float
    planned: float | None
    unit: str
    rows: int | None = None
    note: str = ""
    rows_unit: str = "rows"


def _num(x: float) -> str:
    return f"{x:,.0f}"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Meter:
    """Current rate and ETA from timed readings of a growing count."""

    def __init__(self, window: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.began = clock()
        self._points: deque[tuple[float, float, float]] = deque()

    def add(self, done: float, rows: float = 0.0) -> None:
        now = self.clock()
        self._points.append((now, done, rows))
        while len(self._points) > 2 and now - self._points[1][0] >= self.window:
            self._points.popleft()

    def rates(self) -> tuple[float | None, float | None]:
        """(done per second, rows per second) over the window; None before two readings."""
        if len(self._points) < 2:
            return None, None
        (t0, d0, r0), (t1, d1, r1) = self._points[0], self._points[-1]
        dt = t1 - t0
        if dt <= 0:
            return None, None
        return max(0.0, d1 - d0) / dt, max(0.0, r1 - r0) / dt

    def span(self) -> float:
        """Seconds the readings of the window cover."""
        return self._points[-1][0] - self._points[0][0] if len(self._points) > 1 else 0.0

    def eta(self, remaining: float) -> float | None:
        rate, _ = self.rates()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None


def line(what: str, reading: Reading, meter: Meter) -> str:
    """``copy_cassandra_batch: 120/400 partitions (30 %), 5,210 rows; 40 partitions/s, 1,700 rows/s;
    ETA 7 s | <note>``"""
    parts = [f"{_num(reading.done)}/{_num(reading.planned)} {reading.unit}" if reading.planned is not None
             else f"{_num(reading.done)} {reading.unit}"]
    if reading.planned:
        parts[0] += f" ({min(100.0, 100.0 * reading.done / reading.planned):.0f} %)"
    if reading.rows is not None:
        parts[0] += f", {_num(reading.rows)} {reading.rows_unit}"
    rate, rows_rate = meter.rates()
    if rate is None:
        speed = "rate not known yet"
    else:
        speed = f"{rate:,.1f} {reading.unit}/s" + (f", {rows_rate:,.0f} {reading.rows_unit}/s" if reading.rows is not None else "")
    if reading.planned is None:
        eta = ""
    else:
        left = meter.eta(reading.planned - reading.done)
        eta = "; ETA " + (duration(left) if left is not None else "not known (no progress in the last "
                          f"{duration(meter.span())})")
    out = f"progress {what}: {parts[0]}; {speed}{eta}; {duration(meter.clock() - meter.began)} in"
    return out + (f" | {reading.note}" if reading.note else "")


class Ticker:
    """``with Ticker("copy_cassandra_batch", read):`` logs ``line(...)`` every ``every`` seconds
    while the block runs, and once more at its end if it logged at all (a step of a few seconds
    stays quiet: its own summary says it all)."""

    def __init__(self, what: str, read: Callable[[], Reading], every: float | None = None,
                 close: Callable[[], None] | None = None, logger: logging.Logger = log,
                 meter: Meter | None = None) -> None:
        every = every if every is not None else EVERY_S
        if not 0 < every <= MAX_EVERY_S:
            raise ValueError(f"progress every {every} s: must be in (0, {MAX_EVERY_S}]")
        self.what, self.read, self.every, self.close, self.logger = what, read, every, close, logger
        self.meter = meter or Meter(window=max(3 * every, 30.0))
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress:{what}", daemon=True)

    def tick(self) -> str:
        try:
            r = self.read()
        except Exception as exc:  # a ledger that did not answer: say so, keep going
            text = f"progress {self.what}: not read ({type(exc).__name__}: {str(exc)[:200]}); " \
                   f"{duration(self.meter.clock() - self.meter.began)} in"
        else:
            self.meter.add(r.done, float(r.rows or 0))
            text = line(self.what, r, self.meter)
        self.lines += 1
        self.logger.info("%s", text)
        return text

    def _run(self) -> None:
        try:
            # The starting point, not logged, so that the first line has a rate; a step that ends
            # within it (a short catch-up pass) costs no reading at all.
            seed = min(2.0, self.every / 2)
            if self._stop.wait(seed):
                return
            try:
                first = self.read()
                self.meter.add(first.done, float(first.rows or 0))
            except Exception as exc:  # the first tick says it again, in the log
                log.debug("progress %s: first reading failed: %s", self.what, type(exc).__name__)
            wait = self.every - seed  # the first line ``every`` seconds after the start, then every ``every``
            while not self._stop.wait(wait):
                self.tick()
                wait = self.every
        finally:
            if self.close is not None:
                with contextlib.suppress(Exception):  # a reading connection already gone
                    self.close()

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 5)
        if self.lines and exc[0] is None:
            self.tick()


class Tally:
    """A count a step bumps as it goes (partitions warmed, passes made), read by a ticker."""

    def __init__(self, planned: float | None = None, unit: str = "items") -> None:
        self.done = 0.0
        self.rows = 0
        self.planned = planned
        self.unit = unit
        self.note = ""
        self._lock = threading.Lock()

    def add(self, n: float = 1, rows: int = 0) -> None:
        with self._lock:
            self.done += n
            self.rows += rows

    def reading(self) -> Reading:
        return Reading(self.done, self.planned, self.unit, self.rows or None, self.note)


# -- readings from the ledger -------------------------------------------------------------------

def planned_units(chunk: Chunk) -> float:
    """The planned work of one chunk, in the unit its store is measured in: estimated rows of a
    PostgreSQL chunk, partition keys of a Cassandra chunk (bases x day buckets)."""
    bounds = chunk.bounds or {}
    if chunk.engine == "postgres":
        return float(bounds.get("planned_rows", bounds.get("estimated_rows", 0)) or 0)
    return float(len(bounds.get("bases") or []) * max(1, len(bounds.get("days") or [])))


def unit_of(engine: str) -> str:
    return "estimated rows" if engine == "postgres" else "partitions"


class ChunkProgress:
    """What the ledger says of a batch of chunks (and of the run's whole store): ``read()`` for a
    ``Ticker``. Opens its own connection (``connect``) on first use, in the ticker's thread."""

    def __init__(self, connect: Callable[[], psycopg.Connection], run_id: str, engine: str,
                 chunks: Sequence[Chunk] | None) -> None:
        """``chunks=None``: every chunk of the store, as the step plans them (read again until
        the plan is in the ledger)."""
        self.connect, self.run_id, self.engine = connect, run_id, engine
        self.whole_store = chunks is None
        self.planned = {c.chunk_id: planned_units(c) for c in chunks or []}
        self._conn: psycopg.Connection | None = None

    def _plan(self, conn: psycopg.Connection) -> None:
        from tenant_migration.ledger import Chunk

        self.planned = {r[0]: planned_units(Chunk(r[0], self.engine, r[1], r[2] or {})) for r in conn.execute(
            "SELECT chunk_id, table_name, bounds FROM tm_control.chunks WHERE run_id = %s AND engine = %s",
            (self.run_id, self.engine))}

    def read(self) -> Reading:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        if self.whole_store and not self.planned:
            self._plan(self._conn)
        ids = list(self.planned)
        rows = self._conn.execute(
            "SELECT chunk_id, status, rows_copied FROM tm_control.chunks WHERE run_id = %s AND chunk_id = ANY(%s)",
            (self.run_id, ids)).fetchall()
        whole = self._conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'), count(*), count(*) FILTER (WHERE status = 'failed') "
            "FROM tm_control.chunks WHERE run_id = %s AND engine = %s", (self.run_id, self.engine)).fetchone()
        done = [r for r in rows if r[1] == "done"]
        running = [r[0] for r in rows if r[1] == "running"]
        note = f"batch: {len(done)}/{len(ids)} chunks done"
        if running:
            note += f", running {running[0]}" + (f" (+{len(running) - 1})" if len(running) > 1 else "")
        if whole:
            note += f"; run: {whole[0]:,}/{whole[1]:,} {self.engine} chunks done"
            if whole[2]:
                note += f", {whole[2]} failed"
        return Reading(sum(self.planned.get(r[0], 0.0) for r in done), sum(self.planned.values()),
                       unit_of(self.engine), sum(int(r[2] or 0) for r in done), note)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def chunk_ticker(what: str, connect: Callable[[], psycopg.Connection], run_id: str, engine: str,
                 chunks: Sequence[Chunk] | None, every: float | None = None) -> Ticker:
    cp = ChunkProgress(connect, run_id, engine, chunks)
    return Ticker(what, cp.read, every=every, close=cp.close)
