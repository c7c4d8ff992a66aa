"""The tenant's DNS records and the flip, through Route53 (a moto server locally).

Devices and apps reach the platform through per-tenant names (``devices.<slug>.<zone>``,
``api.<slug>.<zone>``) that are CNAMEs to the shared platform's endpoints; the flip UPSERTs them
to the tenant's dedicated endpoints. UPSERT makes a retry after a partial change converge.
The zone is looked up by name; Route53 reports no DNS answers here (moto serves no DNS), so
"what a client resolves" is computed by following the CNAME chain through the API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

SERVICES = ("devices", "api")


class Route53Client(Protocol):
    def list_hosted_zones_by_name(self, **kwargs: Any) -> dict[str, Any]: ...
    def list_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]: ...
    def change_resource_record_sets(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_change(self, **kwargs: Any) -> dict[str, Any]: ...


class DnsError(RuntimeError):
    """A DNS step cannot proceed or did not verify."""


@dataclass(frozen=True)
class RecordPlan:
    name: str
    shared_target: str
    tenant_target: str


def tenant_records(zone: str, slug: str, prefix: str = "vpc") -> list[RecordPlan]:
    """The tenant's records and where they point before (shared) and after (dedicated) the flip."""
    return [
        RecordPlan(
            name=f"{svc}.{slug}.{zone}",
            shared_target=f"{svc}.shared.{zone}",
            tenant_target=f"{svc}.{prefix}-{slug}.{zone}",
        )
        for svc in SERVICES
    ]


def zone_id(client: Route53Client, zone: str) -> str:
    resp = client.list_hosted_zones_by_name(DNSName=zone, MaxItems="1")
    for hz in resp.get("HostedZones", []):
        if hz["Name"] == zone:
            return str(hz["Id"]).split("/")[-1]
    raise DnsError(f"hosted zone {zone} does not exist in Route53")


def records(client: Route53Client, zid: str) -> dict[str, dict[str, Any]]:
    """Every record set of the zone by name (CNAME and A only)."""
    out: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"HostedZoneId": zid}
    while True:
        resp = client.list_resource_record_sets(**kwargs)
        for rr in resp["ResourceRecordSets"]:
            if rr["Type"] in ("CNAME", "A"):
                out[rr["Name"]] = rr
        if not resp.get("IsTruncated"):
            return out
        kwargs["StartRecordName"] = resp["NextRecordName"]
        kwargs["StartRecordType"] = resp["NextRecordType"]


def resolve(client: Route53Client, zid: str, name: str, max_hops: int = 8) -> list[str]:
    """The chain a resolver would follow from ``name``: [name, cname..., address]."""
    sets = records(client, zid)
    chain = [name]
    current = name
    for _ in range(max_hops):
        rr = sets.get(current)
        if rr is None:
            raise DnsError(f"{current} has no record in the zone")
        value = rr["ResourceRecords"][0]["Value"]
        chain.append(value)
        if rr["Type"] == "A":
            return chain
        current = value if value.endswith(".") else value + "."
    raise DnsError(f"{name}: CNAME chain longer than {max_hops}")


def wait_insync(client: Route53Client, change_id: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_change(Id=change_id)["ChangeInfo"]["Status"]
        if status == "INSYNC":
            return
        if time.monotonic() > deadline:
            raise DnsError(f"change {change_id} still {status} after {timeout:.0f}s")
        time.sleep(2)


def point_records(
    client: Route53Client, zid: str, plans: list[RecordPlan], to_tenant: bool, ttl: int = 60
) -> dict[str, str]:
    """UPSERT every record to the tenant's (or back to the shared) target, wait INSYNC, verify.

    Returns name -> target as read back. Records already pointing right are left out of the
    change batch, so a retry after a partial change only sends what is still wrong.
    """
    current = records(client, zid)
    changes = []
    for plan in plans:
        want = plan.tenant_target if to_tenant else plan.shared_target
        rr = current.get(plan.name)
        have = rr["ResourceRecords"][0]["Value"] if rr else None
        if have == want and rr is not None and rr.get("TTL") == ttl:
            continue
        changes.append(
            {
                "Action": "UPSERT",
                "ResourceRecordSet": {
                    "Name": plan.name,
                    "Type": "CNAME",
                    "TTL": ttl,
                    "ResourceRecords": [{"Value": want}],
                },
            }
        )
    if changes:
        resp = client.change_resource_record_sets(
            HostedZoneId=zid,
            ChangeBatch={"Comment": "tenant migration flip", "Changes": changes},
        )
        wait_insync(client, resp["ChangeInfo"]["Id"])
    after = records(client, zid)
    result: dict[str, str] = {}
    for plan in plans:
        want = plan.tenant_target if to_tenant else plan.shared_target
        got = after.get(plan.name, {}).get("ResourceRecords", [{}])[0].get("Value")
        if got != want:
            raise DnsError(f"{plan.name} reads back {got!r}, expected {want!r}")
        result[plan.name] = got
    return result


def lower_ttl(client: Route53Client, zid: str, plans: list[RecordPlan], ttl: int) -> int:
    """Re-publish the tenant's records unchanged but with ``ttl``; return the highest TTL they had.

    Clients may cache a record for its old TTL: the flip must wait that long after this step so
    that, when the flip happens, no client holds an answer older than ``ttl``.
    """
    current = records(client, zid)
    old = 0
    changes = []
    for plan in plans:
        rr = current.get(plan.name)
        if rr is None:
            raise DnsError(f"{plan.name} has no record")
        old = max(old, int(rr.get("TTL", 0)))
        if int(rr.get("TTL", 0)) <= ttl:
            continue
        changes.append({"Action": "UPSERT", "ResourceRecordSet": {
            "Name": plan.name, "Type": rr["Type"], "TTL": ttl, "ResourceRecords": rr["ResourceRecords"]}})
    if changes:
        resp = client.change_resource_record_sets(
            HostedZoneId=zid, ChangeBatch={"Comment": "tenant migration: lower TTL", "Changes": changes})
        wait_insync(client, resp["ChangeInfo"]["Id"])
    return old
