"""DNS resolution as a device does it: follow the tenant's CNAME through Route53 and cache the
answer for its TTL. After the flip, a device keeps writing to the old endpoint until its cached
answer expires: the stragglers the migration must drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenant_migration.cutover import dns


@dataclass(frozen=True)
class Answer:
    name: str
    endpoint: str  # the CNAME target: which deployment the name points at
    ttl: int
    fetched_at: float


class CachingResolver:
    """Thread-safe, per-name TTL cache in front of the Route53 API (moto locally)."""

    def __init__(self, client: dns.Route53Client, zone_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.zone_id = zone_id
        self.clock = clock
        self._cache: dict[str, Answer] = {}
        self._lock = threading.Lock()
        self.lookups = 0

    def resolve(self, name: str) -> Answer:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and now - hit.fetched_at < hit.ttl:
                return hit
        sets = dns.records(self.client, self.zone_id)
        rr = sets.get(name)
        if rr is None:
            raise dns.DnsError(f"{name} has no record")
        answer = Answer(name, rr["ResourceRecords"][0]["Value"], int(rr.get("TTL", 60)), now)
        with self._lock:
            self._cache[name] = answer
            self.lookups += 1
        return answer
