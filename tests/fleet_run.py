"""A simulated fleet of one tenant writing through its DNS records beside a live run in a real
Airflow, and what its journal found afterwards: the e2e tests that trigger through the REST API
share it (``test_cutover_faults``, ``test_celery_workers``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from tenant_migration.cutover import dns
from tenant_migration.sample import data, dns_records
from tenant_migration.sample.fleet import report as zd_report
from tenant_migration.sample.fleet.__main__ import build
from tenant_migration.sample.fleet.journal import Journal
from tenant_migration.sample.fleet.simulator import FleetConfig, FleetStats
from tenant_migration.sample.fleet.verify import verify
from tenant_migration.spec import MigrationSpec


class FleetRun:
    """The fleet writing through DNS in a thread, its journal, and what it found afterwards."""

    def __init__(self, endpoints: Any, cfg: FleetConfig, journal_file: Any) -> None:
        self.journal_file = journal_file
        self.journal = Journal(journal_file)
        self.fleet = build(endpoints, cfg, self.journal)
        self.fleet.connect_all()
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name="fleet", daemon=True)

    def _run(self) -> None:
        try:
            self.outcome["stats"] = self.fleet.run()
        except BaseException as exc:
            self.outcome["error"] = exc

    def __enter__(self) -> FleetRun:
        self.thread.start()
        time.sleep(3)  # the fleet writes to the shared platform before the run starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(3)  # and keeps writing, now to the target, after the run
        self.fleet.stop()
        self.thread.join(timeout=120)
        self.journal.close()


def fleet_config(tenant_id: int, slug: str, **over: Any) -> FleetConfig:
    """A small fleet: 40 devices, a quarter of them active, app updates and registrations."""
    return FleetConfig(**{"tenant_id": tenant_id, "slug": slug, "devices": 40, "active_fraction": 0.25,
                          "active_per_second": 2.0, "background_per_hour": 60.0, "app_updates_per_second": 1.0,
                          "registrations_per_minute": 10.0, "device_registrations_per_minute": 0.0,
                          "registration_retry_s": 2.0, "duration_s": 3600.0, "dns_clients": 8, "app_clients": 2,
                          **over})


def prepare(topo: Any, endpoints: Any, tenant_id: int, normal_ttl: int) -> str:
    """An emptied target, the tenant's DNS on the shared platform at ``normal_ttl``; its slug."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    slug = data.TENANT_SLUGS[tenant_id - 1]
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    dns.lower_ttl(r53, zid, dns.tenant_records(dns_records(), MigrationSpec.dns_zone, slug), normal_ttl)
    return slug


def check_nothing_lost(run: FleetRun, endpoints: Any, run_key: str, tmp_path: Any) -> tuple[Any, Any]:
    """Every acknowledged write of the fleet is on the target in its final state; the journal's
    verdict and the zero-downtime report (``run_key``: the ledger's ``dag/run``)."""
    assert "error" not in run.outcome, run.outcome.get("error")
    stats = run.outcome["stats"]
    assert isinstance(stats, FleetStats)
    result = verify(run.journal_file, endpoints.target, endpoints.cassandra_target)
    rep = zd_report.build_report(run.journal_file, endpoints.target, run_key, tmp_path / "zd")
    print(rep.summary())
    print("fleet journal:", result.to_dict())
    assert result.datapoints_acked > 0 and result.app_updates_checked > 0
    assert result.ok, result.to_dict()
    return result, rep
