"""Seeds the moto server with the sample platform's AWS control plane: a hosted zone holding every
tenant's device and app endpoint records (pointing at the shared platform), each tenant's dedicated
("VPC") endpoints, and an RDS primary with a read replica. Idempotent: UPSERTs and existence checks.
"""

from __future__ import annotations

from typing import Any

from tenant_migration.cutover import dns
from tenant_migration.sample import dns_records

ZONE = "iot.example.test."
SHARED_ADDRESSES = {"devices": "127.0.0.2", "api": "127.0.0.1"}
TENANT_ADDRESSES = {"devices": "127.0.0.3", "api": "127.0.0.1"}
RDS_PRIMARY = "platform-primary"
RDS_REPLICA = "platform-replica"


def ensure_zone(r53: Any, zone: str = ZONE) -> str:
    try:
        return dns.zone_id(r53, zone)
    except dns.DnsError:
        resp = r53.create_hosted_zone(Name=zone, CallerReference=f"tenant-migration-{zone}")
        return str(resp["HostedZone"]["Id"]).split("/")[-1]


def _upsert(name: str, rtype: str, value: str, ttl: int) -> dict[str, Any]:
    return {
        "Action": "UPSERT",
        "ResourceRecordSet": {"Name": name, "Type": rtype, "TTL": ttl, "ResourceRecords": [{"Value": value}]},
    }


def seed_dns(r53: Any, slugs: list[str], zone: str = ZONE, prefix: str = "vpc", reset: bool = True,
             ttl: int = 300) -> int:
    """Shared endpoints (A), every tenant's records (CNAME to shared, ``ttl``) and dedicated endpoints (A).

    With ``reset`` the tenants' records point back at the shared platform (demo and test reset).
    """
    zid = ensure_zone(r53, zone)
    sets = dns.record_sets(r53, zid)
    existing = set(sets)
    # A weighted set left by a shift cannot take a simple UPSERT beside it: converged on its own below.
    weighted = {name for name, rrs in sets.items() if any("SetIdentifier" in rr for rr in rrs)}
    changes = [_upsert(f"{svc}.shared.{zone}", "A", addr, 300) for svc, addr in SHARED_ADDRESSES.items()]
    for slug in slugs:
        for plan in dns.tenant_records(dns_records(), zone, slug, prefix):
            svc = plan.name.split(".", 1)[0]
            changes.append(_upsert(plan.tenant_target, "A", TENANT_ADDRESSES[svc], 300))
            if (reset or plan.name not in existing) and plan.name not in weighted:
                changes.append(_upsert(plan.name, "CNAME", plan.shared_target, ttl))
    for i in range(0, len(changes), 500):
        r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": changes[i : i + 500]})
    stuck = [plan for slug in slugs for plan in dns.tenant_records(dns_records(), zone, slug, prefix) if plan.name in weighted]
    if stuck and reset:
        dns.shift_records(r53, zid, stuck, 0, ttl=ttl)
    return len(changes) + len(stuck)


def seed_rds(rds: Any) -> None:
    """An RDS primary and its read replica, for the RDS flavour of replica detach."""
    names = {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]}
    if RDS_PRIMARY not in names:
        rds.create_db_instance(
            DBInstanceIdentifier=RDS_PRIMARY,
            DBInstanceClass="db.r6g.large",
            Engine="postgres",
            MasterUsername="platform",
            MasterUserPassword="not-a-real-password",
            AllocatedStorage=100,
        )
    if RDS_REPLICA not in names:
        rds.create_db_instance_read_replica(
            DBInstanceIdentifier=RDS_REPLICA, SourceDBInstanceIdentifier=RDS_PRIMARY
        )
