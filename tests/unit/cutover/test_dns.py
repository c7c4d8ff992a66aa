"""The flip logic against an in-memory Route53 at the client seam (the integration tests use a
moto server over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from tenant_migration.cutover import dns
from tenant_migration.sample import dns_records

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


def _seeded(fake: FakeRoute53) -> FakeRoute53:
    """The shared endpoints, the tenant's VPC endpoints, and the tenant's names on the shared ones."""
    for svc in ("devices", "api"):  # the sample profile's services
        fake.put(f"{svc}.shared.{ZONE}", "A", "10.0.0.1")
        fake.put(f"{svc}.vpc-acme.{ZONE}", "A", "10.0.0.2")
        fake.put(f"{svc}.acme.{ZONE}", "CNAME", f"{svc}.shared.{ZONE}")
    return fake


@pytest.fixture
def r53() -> FakeRoute53:
    return _seeded(FakeRoute53())


def test_resolve_follows_the_cname_chain(r53: FakeRoute53) -> None:
    assert dns.resolve(r53, "Z1", f"devices.acme.{ZONE}") == [
        f"devices.acme.{ZONE}", f"devices.shared.{ZONE}", "10.0.0.1"]


def test_flip_points_every_record_at_the_tenant(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    for plan in plans:
        assert dns.resolve(r53, "Z1", plan.name)[-1] == "10.0.0.2"


def test_retry_after_a_partial_change_converges_and_sends_only_what_is_wrong(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    r53.fail_after = 1
    with pytest.raises(ConnectionError):
        dns.point_records(r53, "Z1", plans, to_tenant=True)
    r53.fail_after = None
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    assert len(r53.batches[-1]) == 1
    assert {dns.resolve(r53, "Z1", p.name)[-1] for p in plans} == {"10.0.0.2"}


def test_flip_twice_changes_nothing_the_second_time(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    sent = len(r53.batches)
    dns.point_records(r53, "Z1", plans, to_tenant=True)
    assert len(r53.batches) == sent


def test_missing_record_is_reported_by_name(r53: FakeRoute53) -> None:
    del r53.sets[f"devices.shared.{ZONE}"]
    with pytest.raises(dns.DnsError, match=r"devices\.shared"):
        dns.resolve(r53, "Z1", f"devices.acme.{ZONE}")


def test_lower_ttl_keeps_targets_and_reports_the_old_ttl(r53: FakeRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    assert dns.lower_ttl(r53, "Z1", plans, ttl=30) == 300
    for plan in plans:
        assert r53.sets[plan.name]["TTL"] == 30
        assert r53.sets[plan.name]["ResourceRecords"][0]["Value"] == plan.shared_target
    sent = len(r53.batches)
    assert dns.lower_ttl(r53, "Z1", plans, ttl=30) == 30
    assert len(r53.batches) == sent, "a second lowering sends nothing"


class StrictRoute53(FakeRoute53):
    """Route53's own rules the moto server does not enforce: a batch is atomic, a DELETE must
    name an existing set with its current values, and a name/type is either one simple set or
    weighted sets, never both."""

    def list_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]:
        return {"ResourceRecordSets": [dict(rr) for rr in self.sets.values()], "IsTruncated": False}

    def change_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]:
        changes = kwargs["ChangeBatch"]["Changes"]
        self.batches.append(changes)
        new = dict(self.sets)
        for change in changes:
            rr = change["ResourceRecordSet"]
            key = f"{rr['Name']}|{rr['Type']}|{rr.get('SetIdentifier', '')}"
            if change["Action"] == "DELETE":
                if new.get(key) != rr:
                    raise ValueError(f"InvalidChangeBatch: DELETE of {key} does not match the set")
                del new[key]
            else:
                new[key] = rr
        for rr in new.values():
            kinds = {"SetIdentifier" in o for o in new.values() if (o["Name"], o["Type"]) == (rr["Name"], rr["Type"])}
            if len(kinds) > 1:
                raise ValueError(f"InvalidChangeBatch: {rr['Name']} simple and weighted at once")
        self.sets = new
        return {"ChangeInfo": {"Id": "C1", "Status": "PENDING"}}

    def put(self, name: str, rtype: str, value: str) -> None:
        self.sets[f"{name}|{rtype}|"] = {"Name": name, "Type": rtype, "TTL": 300, "ResourceRecords": [{"Value": value}]}


@pytest.fixture
def strict() -> StrictRoute53:
    fake = StrictRoute53()
    _seeded(fake)
    return fake


def _weights(r53: StrictRoute53, plans: list[dns.RecordPlan]) -> dict[str, int | None]:
    sets = dns.record_sets(r53, "Z1")
    return {p.name: dns.target_weight(sets[p.name], p) for p in plans}


def test_each_shift_step_is_one_batch_that_route53_accepts(strict: StrictRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    for percent in (10, 50, 100):
        sent = len(strict.batches)
        dns.shift_records(strict, "Z1", plans, percent)
        assert len(strict.batches) == sent + 1, "one change batch per step"
        assert _weights(strict, plans) == {p.name: percent for p in plans}
    first, _, last = strict.batches
    assert [c["Action"] for c in first] == ["DELETE", "UPSERT", "UPSERT"] * 2, "simple out, weighted pair in"
    assert [c["Action"] for c in last] == ["DELETE", "DELETE", "UPSERT"] * 2, "weighted pair out, simple in"
    assert all("SetIdentifier" not in rr for rr in strict.sets.values()), "100 % is a simple record again"


def test_a_step_run_twice_sends_nothing_the_second_time(strict: StrictRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    dns.shift_records(strict, "Z1", plans, 10)
    sent = len(strict.batches)
    dns.shift_records(strict, "Z1", plans, 10)
    assert len(strict.batches) == sent


def test_pointing_back_from_a_weighted_set_leaves_the_simple_source_record(strict: StrictRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    dns.shift_records(strict, "Z1", plans, 50)
    dns.point_records(strict, "Z1", plans, to_tenant=False)
    assert _weights(strict, plans) == {p.name: 0 for p in plans}
    assert all("SetIdentifier" not in rr for rr in strict.sets.values())


def test_lower_ttl_keeps_the_weights_of_a_weighted_set(strict: StrictRoute53) -> None:
    plans = dns.tenant_records(dns_records(), ZONE, "acme")
    dns.shift_records(strict, "Z1", plans, 10, ttl=300)
    assert dns.lower_ttl(strict, "Z1", plans, ttl=30) == 300
    assert _weights(strict, plans) == {p.name: 10 for p in plans}
    assert {rr["TTL"] for rr in strict.sets.values() if "Weight" in rr} == {30}


def test_pick_spreads_clients_by_weight_and_keeps_each_client_s_answer(strict: StrictRoute53) -> None:
    plan = dns.tenant_records(dns_records(), ZONE, "acme")[0]
    dns.shift_records(strict, "Z1", [plan], 10)
    sets = dns.record_sets(strict, "Z1")[plan.name]
    answers = [dns.pick(sets, f"client-{i}")["ResourceRecords"][0]["Value"] for i in range(2000)]
    assert 120 < answers.count(plan.tenant_target) < 280, "about 10 % of 2000 clients"
    assert answers == [dns.pick(sets, f"client-{i}")["ResourceRecords"][0]["Value"] for i in range(2000)]
    assert dns.pick(sets)["ResourceRecords"][0]["Value"] == plan.shared_target, "no client: the heaviest member"
