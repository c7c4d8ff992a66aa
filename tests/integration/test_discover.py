"""Issue 33, item 1: discovery on the live catalogs of both bundled platforms (the replica's
read-only role, the source Cassandra cluster). Each draft equals the hand-written tenant map, or
differs from it in exactly the tables the draft lists as refused; the command prints a YAML the
profile loader accepts, and says clearly what it cannot do."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import yaml

from tenant_migration import profile
from tenant_migration.discover import discover
from tenant_migration.discover.__main__ import main
from tenant_migration.sample import PROFILE as SAMPLE_PROFILE
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.sample.meterhub import PROFILE as METERHUB_PROFILE
from tenant_migration.tenant_map import load_tenant_map

pytestmark = pytest.mark.integration

PLATFORMS = {
    "sample": ("platform", "tenants", "telemetry", "sample-iot", SAMPLE_MAP, SAMPLE_PROFILE),
    "meterhub": ("hub", "orgs", "hub_metrics", "meterhub", METERHUB_PROFILE.parent.parent / "tenant_map.yaml",
                 METERHUB_PROFILE),
}


@pytest.fixture(scope="module")
def both_platforms(topo, tiny_dataset) -> None:
    from tenant_migration.sample.meterhub import platform as meterhub

    meterhub.load_data(topo, "tiny", 7)  # kept when it is there already


def _discover(endpoints, name: str, choose=None):
    schema, root, keyspace, platform, _, _ = PLATFORMS[name]
    with endpoints.replica.connect(autocommit=True) as conn, endpoints.cassandra_source.session() as session:
        started = time.monotonic()
        found = discover(conn, schema, root, platform, session=session, keyspace=keyspace, choose=choose)
        print(f"{name}: discovery {time.monotonic() - started:.3f} s\n{found.summary()}")
        return found


@pytest.mark.parametrize("name", ["sample", "meterhub"])
def test_the_draft_is_the_hand_written_map_but_for_the_tables_it_lists(endpoints, both_platforms, name) -> None:
    found = _discover(endpoints, name)
    hand = load_tenant_map(PLATFORMS[name][4])
    draft = found.tenant_map
    listed = {r.table for r in found.draft.refused}
    differ = {t for t in set(hand.tables) | set(draft.tables) if hand.tables.get(t) != draft.tables.get(t)}
    assert differ == listed, f"the draft differs from the hand-written map in {differ}, and lists {listed}"
    assert {"sample": {"device_registrations", "device_shares"}, "meterhub": set()}[name] == listed
    assert all(r.kind == "two-ways" for r in found.draft.refused)
    assert draft.shared_tables == tuple(sorted(hand.shared_tables))
    assert draft.cassandra_tables == hand.cassandra_tables and found.keyspace.refused == []
    assert (draft.schema, draft.root_table, draft.root_key, draft.keyspace, draft.retention_days) == (
        hand.schema, hand.root_table, hand.root_key, hand.keyspace, hand.retention_days)


def test_choosing_the_hop_of_each_table_reached_two_ways_gives_the_sample_map_exactly(endpoints,
                                                                                     both_platforms) -> None:
    found = _discover(endpoints, "sample", {"device_registrations": "device_id", "device_shares": "device_id"})
    hand = load_tenant_map(SAMPLE_MAP)
    assert found.draft.refused == []
    assert dataclasses.replace(found.tenant_map, shared_tables=hand.shared_tables) == hand


@pytest.mark.parametrize("name", ["sample", "meterhub"])
def test_the_command_prints_a_map_the_profile_loader_accepts(topo, both_platforms, tmp_path: Path, capsys,
                                                             name) -> None:
    schema, root, keyspace, platform, hand_map, prof = PLATFORMS[name]
    out = tmp_path / "my-profiles" / "tenant_map.yaml"  # a folder not made yet
    rc = main(["--connections", str(topo.state_dir / "connections.json"), "--connection", "tm_source_replica",
               "--schema", schema, "--tenant-table", root, "--cassandra-connection", "tm_cassandra_source",
               "--keyspace", keyspace, "--platform", platform, "--out", str(out),
               *(["--choose", "device_registrations=device_id", "--choose", "device_shares=device_id"]
                 if name == "sample" else [])])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"schema {schema}: " in err and "discovered in" in err
    doc = yaml.safe_load(prof.read_text())
    doc["tenant_map"] = str(out)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    loaded = profile.load(tmp_path / f"{name}.yaml")
    assert set(loaded.tenant_map.tables) == set(load_tenant_map(hand_map).tables)
    assert profile.main([str(tmp_path / f"{name}.yaml")]) == 0


def test_the_command_says_what_it_cannot_do(topo, both_platforms, tmp_path: Path, capsys) -> None:
    conns = topo.state_dir / "connections.json"
    base = ["--connections", str(conns), "--connection", "tm_source_replica"]
    assert main([*base, "--schema", "hub", "--tenant-table", "org"]) == 1
    assert "discover: hub.org: no such table in schema 'hub' (its tables: channel_alarms" in capsys.readouterr().err
    assert main([*base, "--schema", "nothere", "--tenant-table", "orgs"]) == 1
    assert "schema 'nothere': no tables (it does not exist, or this role may not see it)" in capsys.readouterr().err
    assert main([*base, "--schema", "hub", "--tenant-table", "orgs", "--keyspace", "hub_metrics"]) == 1
    assert "--keyspace and --cassandra-connection go together" in capsys.readouterr().err
    assert main([*base, "--schema", "hub", "--tenant-table", "orgs", "--choose", "meters"]) == 1
    assert "--choose 'meters': expected TABLE=COLUMN" in capsys.readouterr().err
    assert main(["--connections", str(conns), "--connection", "tm_nope", "--schema", "hub", "--tenant-table", "orgs"]) == 1
    assert "connection 'tm_nope' is not in" in capsys.readouterr().err
    dead = json.loads(conns.read_text())
    dead["tm_source_replica"]["port"] = 1  # nothing listens there
    (tmp_path / "dead.json").write_text(json.dumps(dead))
    assert main(["--connections", str(tmp_path / "dead.json"), "--connection", "tm_source_replica", "--schema", "hub",
                 "--tenant-table", "orgs"]) == 1
    err = capsys.readouterr().err
    assert "discover: cannot reach PostgreSQL 127.0.0.1:1/" in err and dead["tm_source_replica"]["password"] not in err
