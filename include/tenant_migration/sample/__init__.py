"""The sample shared IoT platform: its schemas, its tenant map and a deterministic data generator.

``data`` builds the rows (pure, no I/O); ``generate`` loads them into PostgreSQL and Cassandra. Its
platform profile is ``include/profiles/sample.yaml`` (``PROFILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenant_migration.profile import DnsRecord, Profile

PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "sample.yaml"
SAMPLE_MAP = Path(__file__).resolve().parent / "tenant_map.yaml"


def profile() -> Profile:
    """The sample platform's profile, read (and cached) by the engine's loader."""
    from tenant_migration import profile as profiles

    return profiles.load(PROFILE)


def dns_records() -> list[DnsRecord]:
    return profile().dns.records
