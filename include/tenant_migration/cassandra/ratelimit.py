"""A token bucket that caps how many rows per second a run reads from the shared cluster.

Why: the source is a shared cluster; the migration must leave head-room for the other tenants'
reads and writes. The bucket is charged with rows *read* (every copied row is read once), so the
limit also bounds the write rate on the target. It is thread-safe; with several copier processes
each process gets ``rate / processes`` (see ``copy.copy_pending``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked. ``rate=None`` never blocks."""

    def __init__(
        self,
        rate: float | None,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive or None, got {rate}")
        self.rate = rate
        # One second of tokens by default: short bursts are fine, a sustained overshoot is not.
        self.burst = burst if burst is not None else (rate or 0.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0
        self.taken = 0.0  # every token asked for, limited or not: the rows read so far (progress)

    def acquire(self, n: float) -> float:
        """Take ``n`` tokens, sleeping until they are available; returns the seconds slept.

        A request larger than the burst is allowed (a large page must not deadlock): it drives the
        balance negative and the following callers wait it off.
        """
        if n <= 0:
            return 0.0
        if self.rate is None:
            with self._lock:
                self.taken += n
            return 0.0
        with self._lock:
            self.taken += n
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            deficit = -self._tokens
        if deficit <= 0:
            return 0.0
        wait = deficit / self.rate
        self._sleep(wait)
        self.waited += wait
        return wait
