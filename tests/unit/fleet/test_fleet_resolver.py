"""The fleet's DNS cache: per-client TTL caching, so clients move over one by one after a flip."""

from __future__ import annotations

from typing import Any

from tenant_migration.sample.fleet.resolver import CachingResolver

NAME = "devices.acme.iot.example.test."


class FakeRoute53:
    """Only the list call the resolver makes; the answer can be flipped."""

    def __init__(self, target: str, ttl: int) -> None:
        self.target, self.ttl, self.calls = target, ttl, 0

    def list_resource_record_sets(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        return {"ResourceRecordSets": [{"Name": NAME, "Type": "CNAME", "TTL": self.ttl,
                                        "ResourceRecords": [{"Value": self.target}]}], "IsTruncated": False}

    def list_hosted_zones_by_name(self, **_: Any) -> dict[str, Any]: ...
    def change_resource_record_sets(self, **_: Any) -> dict[str, Any]: ...
    def get_change(self, **_: Any) -> dict[str, Any]: ...


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_client_keeps_its_stale_answer_until_its_ttl_expires() -> None:
    r53, clock = FakeRoute53("devices.shared.", 10), Clock()
    res = CachingResolver(r53, "Z1", clock=clock, upstream_ttl=0.0)
    assert res.resolve(NAME, "a").endpoint == "devices.shared."
    r53.target = "devices.vpc-acme."
    clock.now = 9.9
    assert res.resolve(NAME, "a").endpoint == "devices.shared."  # a straggler
    clock.now = 10.0
    assert res.resolve(NAME, "a").endpoint == "devices.vpc-acme."


def test_clients_that_fetched_later_move_over_later() -> None:
    r53, clock = FakeRoute53("old.", 10), Clock()
    res = CachingResolver(r53, "Z1", clock=clock, upstream_ttl=0.0)
    res.resolve(NAME, "early")
    clock.now = 5.0
    res.resolve(NAME, "late")
    r53.target = "new."
    clock.now = 11.0
    assert res.resolve(NAME, "early").endpoint == "new."
    assert res.resolve(NAME, "late").endpoint == "old."
    clock.now = 15.0
    assert res.resolve(NAME, "late").endpoint == "new."


def test_route53_is_asked_at_most_once_per_upstream_ttl_for_the_whole_fleet() -> None:
    r53, clock = FakeRoute53("old.", 1), Clock()
    res = CachingResolver(r53, "Z1", clock=clock, upstream_ttl=0.5)
    for i in range(100):
        res.resolve(NAME, f"c{i}")
    assert r53.calls == 1 and res.lookups == 100


def test_a_pinned_client_ignores_the_ttl_for_its_pin() -> None:
    r53, clock = FakeRoute53("devices.shared.", 2), Clock()
    res = CachingResolver(r53, "Z1", clock=clock, upstream_ttl=0.0, pinned=frozenset({"pin"}), pin_seconds=30)
    res.resolve(NAME, "pin")
    res.resolve(NAME, "ok")
    r53.target = "devices.vpc-acme."
    clock.now = 5.0
    assert res.resolve(NAME, "ok").endpoint == "devices.vpc-acme."  # honours the 2 s TTL
    assert res.resolve(NAME, "pin").endpoint == "devices.shared."  # still on the old answer
    clock.now = 30.0
    assert res.resolve(NAME, "pin").endpoint == "devices.vpc-acme."


def test_released_pins_re_resolve_at_once() -> None:
    r53, clock = FakeRoute53("devices.shared.", 2), Clock()
    res = CachingResolver(r53, "Z1", clock=clock, upstream_ttl=0.0, pinned=frozenset({"pin"}), pin_seconds=3600)
    res.resolve(NAME, "pin")
    r53.target = "devices.vpc-acme."
    clock.now = 100.0
    assert res.resolve(NAME, "pin").endpoint == "devices.shared."
    res.release_pins()
    assert res.resolve(NAME, "pin").endpoint == "devices.vpc-acme."


class DownRoute53(FakeRoute53):
    down = False

    def list_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("control plane down")
        return super().list_resource_record_sets(**kwargs)


def test_an_outage_of_the_control_plane_serves_the_stale_answer() -> None:
    r53, clock = DownRoute53("devices.shared.", 2), Clock()
    res = CachingResolver(r53, "Z1", clock=clock, upstream_ttl=0.0)
    res.resolve(NAME, "a")
    r53.down = True
    clock.now = 10.0
    assert res.resolve(NAME, "a").endpoint == "devices.shared." and res.stale_served == 1
    try:
        res.resolve(NAME, "never-resolved")
    except ConnectionError:
        pass
    else:
        raise AssertionError("a client with no answer at all cannot resolve during the outage")
