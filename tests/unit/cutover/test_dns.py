"""The flip logic against an in-memory Route53 at the client seam (the integration tests use a
moto server over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from tenant_migration.cutover import dns

ZONE = "iot.example.test."


class FakeRoute53:
    def __init__(self) -> None:
        self.sets: dict[str, dict[str, Any]] = {}
        self.batches: list[list[dict[str, Any]]] = []
        self.fail_after: int | None = None

    def list_hosted_zones_by_name(self, **kwargs: Any) -> dict[str, Any]:
        return {"HostedZones": [{"Name": ZONE, "Id": "/hostedzone/Z1"}]}

    def list_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]:
        return {"ResourceRecordSets": list(self.sets.values()), "IsTruncated": False}

    def change_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]:
        changes = kwargs["ChangeBatch"]["Changes"]
        self.batches.append(changes)
        for i, change in enumerate(changes):
            if self.fail_after is not None and i >= self.fail_after:
                raise ConnectionError("network dropped mid-batch")
            rr = change["ResourceRecordSet"]
            self.sets[rr["Name"]] = rr
        return {"ChangeInfo": {"Id": "C1", "Status": "PENDING"}}

    def get_change(self, **kwargs: Any) -> dict[str, Any]:
        return {"ChangeInfo": {"Id": kwargs["Id"], "Status": "INSYNC"}}

    def put(self, name: str, rtype: str, value: str) -> None:
        self.sets[name] = {"Name": name, "Type": rtype, "TTL": 300, "ResourceRecords": [{"Value": value}]}


@pytest.fixture
def r53() -> FakeRoute53:
    fake = FakeRoute53()
    for svc in dns.SERVICES:
        fake.put(f"{svc}.shared.{ZONE}", "A", "10.0.0.1")
        fake.put(f"{svc}.vpc-acme.{ZONE}", "A", "10.0.0.2")
        fake.put(f"{svc}.acme.{ZONE}", "CNAME", f"{svc}.shared.{ZONE}")
    return fake


def test_resolve_follows_the_cname_chain(r53: FakeRoute53) -> None:
    assert dns.resolve(r53, "Z1", f"devices.acme.{ZONE}") == [
        f"devices.acme.{ZONE}", f"devices.shared.{ZONE}", "10.0.0.1"]


def test_flip_points_every_record_at_the_tenant(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(ZONE, "acme")
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    for plan in plans:
        assert dns.resolve(r53, "Z1", plan.name)[-1] == "10.0.0.2"


def test_retry_after_a_partial_change_converges_and_sends_only_what_is_wrong(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(ZONE, "acme")
    r53.fail_after = 1
    with pytest.raises(ConnectionError):
        dns.point_records(r53, "Z1", plans, to_tenant=True)
    r53.fail_after = None
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    assert len(r53.batches[-1]) == 1
    assert {dns.resolve(r53, "Z1", p.name)[-1] for p in plans} == {"10.0.0.2"}


def test_flip_twice_changes_nothing_the_second_time(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(ZONE, "acme")
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    sent = len(r53.batches)
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    assert len(r53.batches) == sent


def test_missing_record_is_reported_by_name(r53: FakeRoute53) -> None:
    del r53.sets[f"devices.shared.{ZONE}"]
    with pytest.raises(dns.DnsError, match=r"devices\.shared"):
        dns.resolve(r53, "Z1", f"devices.acme.{ZONE}")


def test_lower_ttl_keeps_targets_and_reports_the_old_ttl(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(ZONE, "acme")
    assert dns.lower_ttl(r53, "Z1", plans, ttl=30) == 300
    for plan in plans:
        assert r53.sets[plan.name]["TTL"] == 30
        assert r53.sets[plan.name]["ResourceRecords"][0]["Value"] == plan.shared_target
    sent = len(r53.batches)
    assert dns.lower_ttl(r53, "Z1", plans, ttl=30) == 30
    assert len(r53.batches) == sent, "a second lowering sends nothing"
