"""DNS resolution as devices do it: follow the tenant's CNAME through Route53 and cache the answer
for its TTL. After the flip, a client keeps writing to the old endpoint until its cached answer
expires: the stragglers the migration must drain.

Design note. Every client (a device, an app instance) has its OWN cache, keyed by ``client``: real
devices fetched their answers at different moments, so after the flip they move over one by one
across a whole TTL, not all at once. One shared cache would make every client switch at the same
instant and hide the straggler window. Route53 (moto locally) is asked at most once per
``upstream_ttl`` seconds for the whole fleet: a recursive resolver in front of the authoritative
servers, which keeps the API rate bounded whatever the fleet size. In the middle of a weighted
shift a name has several record sets: each client gets the member ``dns.pick`` chooses for it
(stable per client, in proportion to the weights), as Route53 spreads answers by weight.

Two misbehaviours real clients have, on purpose: ``pinned`` clients keep an answer for
``pin_seconds`` whatever its TTL (resolvers that pin answers, caches that ignore TTLs), and when the
control plane does not answer, every client keeps using its expired answer (serve-stale, RFC 8767)
rather than failing: a Route53 outage moves nobody.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenant_migration.cutover import dns


@dataclass(frozen=True)
class Answer:
    name: str
    endpoint: str  # the CNAME target: which deployment the name points at
    ttl: int
    fetched_at: float


class CachingResolver:
    """Thread-safe, per-(client, name) TTL cache in front of the Route53 API."""

    def __init__(self, client: dns.Route53Client, zone_id: str, clock: Callable[[], float] = time.monotonic,
                 upstream_ttl: float = 0.2, pinned: frozenset[str] = frozenset(), pin_seconds: float = 0.0,
                 zone: str | None = None) -> None:
        self.client = client
        self.zone = zone  # the zone's name: a zone re-created under a new id (a control plane restarted) is found again
        self.pinned = pinned
        self.pin_seconds = pin_seconds
        self.stale_served = 0  # answers used past their TTL because the control plane did not answer
        self.zone_id = zone_id
        self.clock = clock
        self.upstream_ttl = upstream_ttl
        self._cache: dict[tuple[str, str], Answer] = {}
        self._sets: dict[str, list[dict[str, Any]]] = {}
        self._sets_at = float("-inf")
        self._lock = threading.Lock()
        self._upstream_lock = threading.Lock()
        self.lookups = 0  # answers (re)fetched by a client: cache misses
        self.upstream_queries = 0  # Route53 API calls

    def _records(self, now: float) -> dict[str, list[dict[str, Any]]]:
        with self._upstream_lock:
            if now - self._sets_at >= self.upstream_ttl:
                try:
                    sets = dns.record_sets(self.client, self.zone_id)
                except Exception:
                    if self.zone is None:
                        raise
                    self.zone_id = dns.zone_id(self.client, self.zone)  # resolvers follow names, not ids
                    sets = dns.record_sets(self.client, self.zone_id)
                self._sets = sets
                self._sets_at = now
                self.upstream_queries += 1
            return self._sets

    def release_pins(self) -> None:
        """The pinned clients re-resolve from now on (restarted, or their cache flushed)."""
        with self._lock:
            for key in [k for k in self._cache if k[0] in self.pinned]:
                del self._cache[key]
            self.pinned = frozenset()

    def resolve(self, name: str, client: str = "") -> Answer:
        now = self.clock()
        key = (client, name)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit.fetched_at < hit.ttl:
                return hit
        try:
            sets = self._records(now).get(name)
        except Exception:
            if hit is None:
                raise
            with self._lock:
                self.stale_served += 1
            return hit
        if not sets:
            if hit is not None:  # a zone that lost the record (a control plane restarted empty): keep the answer
                with self._lock:
                    self.stale_served += 1
                return hit
            raise dns.DnsError(f"{name} has no record")
        rr = dns.pick(sets, client)
        ttl = int(rr.get("TTL", 60))
        if client in self.pinned:
            ttl = max(ttl, int(self.pin_seconds))
        answer = Answer(name, rr["ResourceRecords"][0]["Value"], ttl, now)
        with self._lock:
            self._cache[key] = answer
            self.lookups += 1
        return answer
