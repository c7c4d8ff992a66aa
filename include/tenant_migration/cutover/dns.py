"""The tenant's DNS records and the flip, through Route53 (a moto server locally).

Devices and apps reach the platform through per-tenant names (the profile's ``dns.records``, say
``devices.<slug>.<zone>``) that are CNAMEs to the shared platform's endpoints; the flip UPSERTs
them to the tenant's dedicated endpoints. UPSERT makes a retry after a partial change converge.
The zone is looked up by name; Route53 reports no DNS answers here (moto serves no DNS), so
"what a client resolves" is computed by following the CNAME chain through the API.

Weighted shift (optional). A record can be moved in steps: at p % it is a weighted pair of the
same name and type (source weight 100-p, target weight p); at 0 % and 100 % it is the one simple
record the direct flip leaves. Every step is ONE change batch computed from the records as they
are now (``converge``): a simple record and weighted records of one name and type cannot coexist,
so the batch DELETEs what must go (with its current values, as Route53 requires) before it
UPSERTs what must be, and a retry finds either the old or the new state and converges.
Set identifiers are unique in the whole zone (``<role>:<name>``): moto deletes by identifier
alone, whatever the name.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tenant_migration.profile import DnsRecord



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


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def tenant_records(templates: Sequence[DnsRecord], zone: str, slug: str, prefix: str = "vpc",
                   tenant_id: int | None = None) -> list[RecordPlan]:
    """The tenant's records (the profile's ``dns.records``, rendered) and where they point before
    (shared) and after (dedicated) the flip. ``DnsError`` naming the profile's key when a template
    does not render to a DNS name in ``zone`` for this tenant."""
    values = {"slug": slug, "zone": zone, "prefix": prefix, "tenant_id": "" if tenant_id is None else tenant_id}
    plans = []
    for i, t in enumerate(templates):
        rendered = []
        for key in ("name", "shared", "dedicated"):
            name = getattr(t, key).format(**values)
            head = name[: -len(zone)] if name.endswith(zone) else ""
            bad = [label for label in head[:-1].split(".") if not _LABEL.match(label)] if head.endswith(".") else []
            if not head.endswith(".") or bad or len(name) > 253:
                raise DnsError(f"dns.records[{i}].{key}: {getattr(t, key)!r} renders {name!r} for tenant slug "
                               f"{slug!r}, not a DNS name in {zone}" + (f" (bad label {bad[0]!r})" if bad else ""))
            rendered.append(name)
        plans.append(RecordPlan(*rendered))
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise DnsError(f"dns.records: two templates render the same name for tenant slug {slug!r}: {names}")
    return plans


def zone_id(client: Route53Client, zone: str) -> str:
    resp = client.list_hosted_zones_by_name(DNSName=zone, MaxItems="1")
    for hz in resp.get("HostedZones", []):
        if hz["Name"] == zone:
            return str(hz["Id"]).split("/")[-1]
    raise DnsError(f"hosted zone {zone} does not exist in Route53")


def record_sets(client: Route53Client, zid: str) -> dict[str, list[dict[str, Any]]]:
    """Every record set of the zone by name (CNAME and A only): one simple set, or the members
    of a weighted set in the middle of a shift."""
    out: dict[str, list[dict[str, Any]]] = {}
    kwargs: dict[str, Any] = {"HostedZoneId": zid}
    while True:
        resp = client.list_resource_record_sets(**kwargs)
        for rr in resp["ResourceRecordSets"]:
            if rr["Type"] in ("CNAME", "A"):
                out.setdefault(rr["Name"], []).append(rr)
        if not resp.get("IsTruncated"):
            return out
        kwargs["StartRecordName"] = resp["NextRecordName"]
        kwargs["StartRecordType"] = resp["NextRecordType"]
        if resp.get("NextRecordIdentifier"):
            kwargs["StartRecordIdentifier"] = resp["NextRecordIdentifier"]
        else:
            kwargs.pop("StartRecordIdentifier", None)


def records(client: Route53Client, zid: str) -> dict[str, dict[str, Any]]:
    """One record set per name (CNAME and A only); for a weighted name, the one ``pick`` answers."""
    return {name: pick(sets) for name, sets in record_sets(client, zid).items()}


def pick(sets: list[dict[str, Any]], client_key: str = "") -> dict[str, Any]:
    """The member of a name's record sets a resolver answers: the simple set; of a weighted set,
    a member chosen in proportion to the weights, stable per ``client_key`` (one device keeps its
    answer) -- with no key, the heaviest member (ties: the target's, the later identifier)."""
    if len(sets) == 1 or not all("Weight" in rr for rr in sets):
        return sets[0]
    ordered = sorted(sets, key=lambda rr: str(rr.get("SetIdentifier")))
    if not client_key:
        return max(reversed(ordered), key=lambda rr: int(rr["Weight"]))
    total = sum(int(rr["Weight"]) for rr in ordered)
    if total == 0:
        return ordered[0]
    slot = int(hashlib.sha256(client_key.encode()).hexdigest()[:8], 16) % total
    for rr in ordered:
        slot -= int(rr["Weight"])
        if slot < 0:
            return rr
    return ordered[-1]


def target_weight(sets: list[dict[str, Any]], plan: RecordPlan) -> int | None:
    """Percent of ``plan.name``'s answers that go to the tenant's target: 0 or 100 for a simple
    record pointing at the source or the target, the target's share of a weighted set; None when
    the record points elsewhere."""
    if len(sets) == 1 and "Weight" not in sets[0]:
        value = sets[0]["ResourceRecords"][0]["Value"]
        return {plan.shared_target: 0, plan.tenant_target: 100}.get(value)
    weights = {rr["ResourceRecords"][0]["Value"]: int(rr.get("Weight", 0)) for rr in sets}
    if set(weights) != {plan.shared_target, plan.tenant_target}:
        return None
    total = sum(weights.values())
    return round(100 * weights[plan.tenant_target] / total) if total else None


def resolve(client: Route53Client, zid: str, name: str, max_hops: int = 8, client_key: str = "") -> list[str]:
    """The chain a resolver would follow from ``name``: [name, cname..., address] (a weighted
    set answers as ``pick`` says)."""
    sets = record_sets(client, zid)
    chain = [name]
    current = name
    for _ in range(max_hops):
        if current not in sets:
            raise DnsError(f"{current} has no record in the zone")
        rr = pick(sets[current], client_key)
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


def wanted_sets(plan: RecordPlan, percent: int, ttl: int) -> list[dict[str, Any]]:
    """The record sets of ``plan.name`` with ``percent`` % of answers going to the tenant's target:
    one simple CNAME at 0 and 100, a weighted pair in between."""
    if percent in (0, 100):
        value = plan.tenant_target if percent == 100 else plan.shared_target
        return [{"Name": plan.name, "Type": "CNAME", "TTL": ttl, "ResourceRecords": [{"Value": value}]}]
    return [{"Name": plan.name, "Type": "CNAME", "SetIdentifier": f"{role}:{plan.name}", "Weight": weight,
             "TTL": ttl, "ResourceRecords": [{"Value": value}]}
            for role, weight, value in (("source", 100 - percent, plan.shared_target),
                                        ("target", percent, plan.tenant_target))]


def _key(rr: dict[str, Any]) -> tuple[str, str, str | None]:
    return rr["Name"], rr["Type"], rr.get("SetIdentifier")


def _payload(rr: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rr.items() if k in ("Name", "Type", "SetIdentifier", "Weight", "TTL", "ResourceRecords")}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    fields = ("TTL", "Weight", "ResourceRecords")
    return all(a.get(f) == b.get(f) for f in fields)


def converge_changes(current: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The changes that turn one name's ``current`` sets into ``wanted``: DELETE (with the current
    values) every set not wanted, then UPSERT every wanted set that differs. Nothing when equal."""
    want = {_key(rr): rr for rr in wanted}
    have = {_key(rr): rr for rr in current}
    deletes = [{"Action": "DELETE", "ResourceRecordSet": _payload(rr)} for key, rr in have.items() if key not in want]
    # A DELETE of a simple set removes the name's weighted sets too on moto: re-send them all.
    upserts = [{"Action": "UPSERT", "ResourceRecordSet": rr} for key, rr in want.items()
               if deletes or key not in have or not _same(have[key], rr)]
    return deletes + upserts


def shift_records(client: Route53Client, zid: str, plans: list[RecordPlan], percent: int, ttl: int = 60,
                  comment: str = "tenant migration flip") -> dict[str, int]:
    """Set every record so that ``percent`` % of answers go to the tenant's target, in ONE change
    batch computed from the current records (atomic on Route53: a retry finds the old or the new
    state), wait INSYNC, read back and verify. Returns name -> target weight as read back."""
    current = record_sets(client, zid)
    changes = [c for plan in plans for c in converge_changes(current.get(plan.name, []),
                                                             wanted_sets(plan, percent, ttl))]
    if changes:
        resp = client.change_resource_record_sets(HostedZoneId=zid,
                                                  ChangeBatch={"Comment": comment, "Changes": changes})
        wait_insync(client, resp["ChangeInfo"]["Id"])
    after = record_sets(client, zid)
    result: dict[str, int] = {}
    for plan in plans:
        got = after.get(plan.name, [])
        if converge_changes(got, wanted_sets(plan, percent, ttl)):
            raise DnsError(f"{plan.name} reads back {describe_sets(got)}, expected {percent} % to {plan.tenant_target}")
        result[plan.name] = percent
    return result


def describe_sets(sets: list[dict[str, Any]]) -> str:
    return ", ".join(f"{rr['ResourceRecords'][0]['Value']}" + (f" (weight {rr['Weight']})" if "Weight" in rr else "")
                     for rr in sets) or "no record"


def point_records(
    client: Route53Client, zid: str, plans: list[RecordPlan], to_tenant: bool, ttl: int = 60
) -> dict[str, str]:
    """Point every record at the tenant's (or back at the shared) target as one simple record,
    wait INSYNC, verify. Returns name -> target as read back.

    Records already pointing right are left out of the change batch, so a retry after a partial
    change only sends what is still wrong; a weighted set left by a shift is replaced too.
    """
    shift_records(client, zid, plans, 100 if to_tenant else 0, ttl)
    return {plan.name: plan.tenant_target if to_tenant else plan.shared_target for plan in plans}


def lower_ttl(client: Route53Client, zid: str, plans: list[RecordPlan], ttl: int) -> int:
    """Re-publish the tenant's records unchanged but with ``ttl``; return the highest TTL they had.

    Clients may cache a record for its old TTL: the flip must wait that long after this step so
    that, when the flip happens, no client holds an answer older than ``ttl``.
    """
    current = record_sets(client, zid)
    old = 0
    changes = []
    for plan in plans:
        if plan.name not in current:
            raise DnsError(f"{plan.name} has no record")
        for rr in current[plan.name]:  # every member of a weighted set keeps its weight
            old = max(old, int(rr.get("TTL", 0)))
            if int(rr.get("TTL", 0)) > ttl:
                changes.append({"Action": "UPSERT", "ResourceRecordSet": {**_payload(rr), "TTL": ttl}})
    if changes:
        resp = client.change_resource_record_sets(
            HostedZoneId=zid, ChangeBatch={"Comment": "tenant migration: lower TTL", "Changes": changes})
        wait_insync(client, resp["ChangeInfo"]["Id"])
    return old


def ttls_above(sets: dict[str, list[dict[str, Any]]], plans: list[RecordPlan], ttl: int) -> dict[str, int]:
    """The tenant's records whose TTL (of any member of a weighted set) is above ``ttl``: name -> the
    highest TTL found. A record missing from the zone is not listed (``missing_records`` says so)."""
    out: dict[str, int] = {}
    for plan in plans:
        found = max((int(rr.get("TTL", 0)) for rr in sets.get(plan.name, [])), default=0)
        if found > ttl:
            out[plan.name] = found
    return out


def missing_records(sets: dict[str, list[dict[str, Any]]], plans: list[RecordPlan]) -> list[str]:
    """The tenant's records the zone does not hold (a control plane that lost them)."""
    return [plan.name for plan in plans if not sets.get(plan.name)]
