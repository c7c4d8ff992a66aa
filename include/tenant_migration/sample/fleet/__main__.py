"""``python -m tenant_migration.sample.fleet --tenant N --seconds S``: run the simulated fleet of one
tenant against the local stack through its DNS records; print stats and the journal's path."""

from __future__ import annotations

import argparse
import json
import sys

from tenant_migration.cutover import dns
from tenant_migration.endpoints import Endpoints, PgEndpoint
from tenant_migration.sample.fleet.journal import Journal
from tenant_migration.sample.fleet.resolver import CachingResolver
from tenant_migration.sample.fleet.simulator import EndpointDirectory, Fleet, FleetConfig, journal_path, tenant_profile
from tenant_migration.stack.topology import default_topology


def app_on_target(ep: Endpoints) -> PgEndpoint:
    """The platform's app role on the tenant's dedicated PostgreSQL (the stack creates it there too)."""
    return PgEndpoint(ep.target.host, ep.target.port, ep.source_primary.user, ep.source_primary.password,
                      ep.target.dbname)


def build(ep: Endpoints, cfg: FleetConfig, journal: Journal) -> Fleet:
    """A fleet that resolves the tenant's names through Route53 (the way devices do)."""
    r53 = ep.aws.client("route53")
    resolver = CachingResolver(r53, dns.zone_id(r53, cfg.zone),
                               pinned=frozenset(f"dev{i}" for i in range(cfg.pinned_dns_clients)),
                               pin_seconds=cfg.pin_seconds, zone=cfg.zone)
    directory = EndpointDirectory.for_tenant(ep, app_on_target(ep), cfg.zone, cfg.slug, cfg.prefix)
    return Fleet(cfg, resolver, directory, journal, tenant_profile(ep.replica, cfg.tenant_id, cfg.devices))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenant", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--active-fraction", type=float, default=0.1)
    parser.add_argument("--active-per-second", type=float, default=2.0)
    parser.add_argument("--background-per-hour", type=float, default=6.0)
    parser.add_argument("--app-updates-per-second", type=float, default=1.0)
    parser.add_argument("--registrations-per-minute", type=float, default=6.0)
    parser.add_argument("--device-registrations-per-minute", type=float, default=3.0)
    args = parser.parse_args(argv)
    topo = default_topology()
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    with ep.replica.connect(autocommit=True) as conn:
        row = conn.execute("SELECT slug FROM platform.tenants WHERE tenant_id = %s", (args.tenant,)).fetchone()
    if row is None:
        print(f"tenant {args.tenant} does not exist", file=sys.stderr)
        return 2
    cfg = FleetConfig(tenant_id=args.tenant, slug=row[0], devices=args.devices, active_fraction=args.active_fraction,
                      active_per_second=args.active_per_second, background_per_hour=args.background_per_hour,
                      app_updates_per_second=args.app_updates_per_second,
                      registrations_per_minute=args.registrations_per_minute,
                      device_registrations_per_minute=args.device_registrations_per_minute, duration_s=args.seconds)
    path = journal_path(topo.state_dir / "fleet", args.tenant)
    journal = Journal(path)
    try:
        stats = build(ep, cfg, journal).run()
    finally:
        journal.close()
    print(json.dumps({"journal": str(path), **stats.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
