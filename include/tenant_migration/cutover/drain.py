"""How long the straggler drain lasts: until the tenant's writes to the shared platform have stopped.

Design note. After the flip, clients holding the shared platform's answer keep writing there: for
a TTL when they honour it, for as long as they like when they do not (resolvers that pin answers,
caches that ignore TTLs, a control plane that came back with a long TTL). A drain of fixed length
loses every write that arrives after it ends, while the gates pass. So the drain watches: each pass
copies what the shared side holds and reports what it saw of the tenant's writes after the flip
(Cassandra cells with a later writetime, changes of the tenant in the change stream). The drain
lasts at least ``min_seconds`` (the nominal drain, at least the lowered TTL), then ends once no
pass has seen a new write for ``quiet_seconds``; when writes still arrive after ``max_seconds`` it
fails loudly with what it saw: an operator must find the writers that never moved.

Quiet is measured between passes on the worker's own clock (a pass saw a new write, or not), never
by comparing write timestamps with the clock: devices stamp their own writes, and clocks drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Seen:
    """What one pass saw of the tenant's writes on the shared platform after the flip."""

    rows_copied: int = 0  # Cassandra rows the pass copied (all of the recent buckets)
    late_cells: int = 0  # Cassandra: live cells the source holds written after the flip
    newest_cell_us: int | None = None  # the newest of them (microseconds since the epoch)
    changes: int = 0  # relational: changes of the tenant applied from the change stream in this pass
    newest_change: datetime | None = None  # commit time of the newest change applied so far

    def newer_than(self, before: Seen | None) -> bool:
        """A write arrived since ``before`` (the previous pass), or, for the first pass, since the flip."""
        if self.changes > 0:
            return True
        if before is None:
            return self.late_cells > 0
        return self.late_cells > before.late_cells or (self.newest_cell_us or 0) > (before.newest_cell_us or 0)

    def newest(self) -> datetime | None:
        cell = datetime.fromtimestamp(self.newest_cell_us / 1_000_000, UTC) if self.newest_cell_us else None
        found = [t for t in (cell, self.newest_change) if t is not None]
        return max(found) if found else None


@dataclass
class DrainPass:
    pass_no: int
    at_s: float  # seconds since the drain began, when the pass ended
    seen: Seen
    new_writes: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seen"]["newest_change"] = self.seen.newest_change.isoformat() if self.seen.newest_change else None
        newest = self.seen.newest()
        out["newest_write"] = newest.isoformat() if newest else None
        return out


@dataclass
class DrainResult:
    seconds: float
    quiet_seconds: float  # how long the last passes saw nothing new
    passes: list[DrainPass] = field(default_factory=list)

    @property
    def last(self) -> Seen:
        return self.passes[-1].seen if self.passes else Seen()

    def to_dict(self) -> dict[str, Any]:
        newest = max((t for t in (p.seen.newest() for p in self.passes) if t is not None), default=None)
        return {"seconds": round(self.seconds, 3), "quiet_seconds": round(self.quiet_seconds, 3),
                "passes": len(self.passes), "late_cells": self.last.late_cells,
                "changes": sum(p.seen.changes for p in self.passes),
                "rows_copied": sum(p.seen.rows_copied for p in self.passes),
                "newest_write": newest.isoformat() if newest else None,
                "pass_log": [p.to_dict() for p in self.passes]}


class DrainNotQuiet(RuntimeError):
    """Writes of the tenant still reach the shared platform after the drain's maximum."""

    def __init__(self, message: str, result: DrainResult) -> None:
        super().__init__(message)
        self.result = result


def until_quiet(one_pass: Callable[[int], Seen], *, min_seconds: float, quiet_seconds: float, max_seconds: float,
                poll_seconds: float, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep,
                on_pass: Callable[[DrainPass], None] | None = None) -> DrainResult:
    """Run ``one_pass`` every ``poll_seconds`` until at least ``min_seconds`` have passed and no pass
    has seen a new write for ``quiet_seconds``; raise ``DrainNotQuiet`` once ``max_seconds`` have
    passed without that (the message carries the counts and the newest write seen)."""
    began = clock()
    last_new = began
    result = DrainResult(0.0, 0.0)
    before: Seen | None = None
    n = 0
    while True:
        n += 1
        seen = one_pass(n)
        now = clock()
        new = seen.newer_than(before)
        if new:
            last_new = now
        before = seen
        drained = DrainPass(n, round(now - began, 3), seen, new)
        result.passes.append(drained)
        result.seconds, result.quiet_seconds = now - began, now - last_new
        if on_pass is not None:
            on_pass(drained)
        if result.seconds >= min_seconds and result.quiet_seconds >= quiet_seconds:
            return result
        if result.seconds >= max_seconds:
            newest = max((t for t in (p.seen.newest() for p in result.passes) if t is not None), default=None)
            raise DrainNotQuiet(
                f"the tenant's writes still reach the shared platform {result.seconds:.0f}s after the drain began "
                f"(drain_max_s {max_seconds:.0f}): {seen.late_cells} Cassandra cells written there after the flip, "
                f"{sum(p.seen.changes for p in result.passes)} relational changes drained, newest write at "
                f"{newest.isoformat() if newest else 'unknown'}, last new write {result.quiet_seconds:.0f}s ago. "
                f"Some clients never left the shared platform (a resolver pinning the old answer, a TTL ignored): "
                f"find them, then clear this task; the drain resumes and copies what arrived.", result)
        wait = poll_seconds
        if result.seconds < min_seconds:
            wait = min(wait, min_seconds - result.seconds)
        sleep(max(0.0, min(wait, max_seconds - result.seconds)))


class DrainWatch:
    """The drain's progress for a ``progress.Ticker`` (fed by ``until_quiet``'s ``on_pass``):
    seconds drained of the earliest end (``min_seconds``, or ``quiet_seconds`` after the last new
    write, whichever is later), with what the last pass saw."""

    def __init__(self, min_seconds: float, quiet_seconds: float, max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_s, self.quiet_s, self.max_s, self.clock = min_seconds, quiet_seconds, max_seconds, clock
        self.began = clock()
        self.last: DrainPass | None = None
        self.last_new_at = 0.0
        self.rows = 0

    def on_pass(self, p: DrainPass) -> None:
        self.last, self.rows = p, self.rows + p.seen.rows_copied
        if p.new_writes:
            self.last_new_at = p.at_s

    def read(self) -> Any:
        from tenant_migration.progress import Reading

        at = self.clock() - self.began
        end = min(self.max_s, max(self.min_s, self.last_new_at + self.quiet_s))
        if self.last is None:
            note = "first pass running"
        else:
            seen = self.last.seen
            note = (f"pass {self.last.pass_no}: {seen.late_cells:,} Cassandra cells on the shared side after the flip, "
                    f"{seen.changes:,} relational changes; quiet for {max(0.0, at - self.last_new_at):.0f} s of the "
                    f"{self.quiet_s:.0f} s needed; gives up at {self.max_s:.0f} s")
        return Reading(min(at, end), end, "s drained", self.rows, note)
