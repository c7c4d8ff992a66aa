"""The second bundled platform's profile, as the loader sees it: unlike the sample on every axis
the engine must not assume (issue 32, items 1 and 2)."""

from __future__ import annotations

from tenant_migration import profile
from tenant_migration.cutover import dns
from tenant_migration.sample import PROFILE as SAMPLE
from tenant_migration.sample.meterhub import PROFILE, PROFILES, generate


def test_meterhub_is_a_profile_of_its_own_folder() -> None:
    prof = profile.named("", PROFILES)
    assert prof.name == "meterhub" and prof.path == PROFILE
    assert prof.tenant_map.schema == "hub" and prof.tenant_map.keyspace == "hub_metrics"


def test_meterhub_is_unlike_the_sample() -> None:
    hub, sample = profile.load(PROFILE), profile.load(SAMPLE)
    tmap = hub.tenant_map
    assert hub.registrations.kind == "http" and sample.registrations.kind == "sql"
    assert hub.doc.replica.mode == "promote" and sample.doc.replica.mode == "local"
    assert len(tmap.path("channel_alarms")) == 3, "a table three hops from the tenant"
    assert tmap.tables["meter_channels"].key == ("meter_uid", "channel")
    assert tmap.tables["org_members"].key == ("org_id", "email")
    assert tmap.cassandra_tables["readings"].partition_key == ("site_key", "meter_uid")
    assert tmap.cassandra_tables["readings"].day_column is None
    names = [p.name for p in dns.tenant_records(hub.dns.records, "iot.example.test.", "borealis-power", "vpc")]
    assert names == ["borealis-power.ingest.iot.example.test.", "portal-borealis-power.iot.example.test."]
    assert tmap.load_order().index("sites") < tmap.load_order().index("meters") < \
        tmap.load_order().index("meter_channels") < tmap.load_order().index("channel_alarms")


def test_the_presets_hold_a_partition_larger_than_a_driver_page() -> None:
    assert set(generate.PRESETS) == {"tiny", "demo"}
    assert all(p.big_meter_readings > generate.BIG_METER_ROWS_MIN for p in generate.PRESETS.values())
