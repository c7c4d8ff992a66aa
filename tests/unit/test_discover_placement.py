"""Discovery's placement, Cassandra matching and rendering on catalogs built in the test (the seam:
``placement.Catalog``). The live catalogs of both bundled platforms: tests/integration/test_discover.py."""

from __future__ import annotations

import pytest

from tenant_migration.discover import DiscoveryError, check_text, draft_from
from tenant_migration.discover.cassandra import CqlTableInfo
from tenant_migration.discover.placement import Catalog, TableInfo, place
from tenant_migration.postgres.catalog import ForeignKey
from tenant_migration.tenant_map import Hop, TableSpec


def _t(name: str, *cols: str, pk: tuple[str, ...] | None = None, ident: str = "d",
       ident_key: tuple[str, ...] = (), unique: tuple[tuple[str, ...], ...] = ()) -> TableInfo:
    columns = tuple((c.split(":")[0], c.split(":")[1] if ":" in c else "bigint") for c in cols)
    key = (columns[0][0],) if pk is None else pk
    return TableInfo(name, columns, key, ident, ident_key, ((key,) if key else ()) + unique)


def _fk(table: str, cols: str, ref: str, ref_cols: str) -> ForeignKey:
    return ForeignKey(f"{table}_{cols.replace(',', '_')}_fkey", table, tuple(cols.split(",")), ref,
                      tuple(ref_cols.split(",")))


def _cat(tables: list[TableInfo], fks: list[ForeignKey]) -> Catalog:
    return Catalog("app", {t.name: t for t in tables}, fks)


BASE = [_t("orgs", "org_id", "handle:text"), _t("users", "user_id:uuid", "org_id"),
        _t("projects", "project_id", "org_id", "owner:uuid"), _t("plans", "plan_code:text"),
        _t("tasks", "task_id", "project_id", "plan_code:text")]
BASE_FKS = [_fk("users", "org_id", "orgs", "org_id"), _fk("projects", "org_id", "orgs", "org_id"),
            _fk("tasks", "project_id", "projects", "project_id"), _fk("tasks", "plan_code", "plans", "plan_code")]


def _reasons(draft) -> dict[str, tuple[str, str]]:
    return {r.table: (r.kind, r.reason) for r in draft.refused}


def test_shortest_paths_tenant_columns_hops_and_shared_tables() -> None:
    draft = place(_cat(BASE, BASE_FKS), "orgs")
    assert draft.placed["users"].spec == TableSpec("users", ("user_id",), tenant_column="org_id")
    assert draft.placed["tasks"].spec == TableSpec("tasks", ("task_id",), via=Hop("project_id", "projects", "project_id"))
    assert draft.placed["tasks"].path == ("tasks", "projects", "orgs") and draft.placed["tasks"].depth == 2
    assert draft.shared == ["plans"] and draft.refused == []


def test_a_table_reached_two_ways_is_refused_with_both_lines_and_choose_keeps_one() -> None:
    tables = [*BASE, _t("shares", "user_id:uuid", "project_id", pk=("user_id", "project_id")),
              _t("share_notes", "note_id", "user_id:uuid", "project_id")]
    fks = [*BASE_FKS, _fk("shares", "user_id", "users", "user_id"), _fk("shares", "project_id", "projects", "project_id"),
           _fk("share_notes", "user_id,project_id", "shares", "user_id,project_id")]
    draft = place(_cat(tables, fks), "orgs")
    kind, reason = _reasons(draft)["shares"]
    assert kind == "two-ways"
    assert "reached two ways at depth 2: project_id -> projects.project_id (projects -> orgs); " \
           "user_id -> users.user_id (users -> orgs)" in reason and "--choose shares=<column>" in reason
    assert next(r for r in draft.refused if r.table == "shares").candidates == (
        "{key: [user_id, project_id], via: {column: project_id, table: projects}}",
        "{key: [user_id, project_id], via: {column: user_id, table: users}}")
    assert _reasons(draft)["share_notes"][0] == "through-refused"
    assert "shares" not in draft.shared, "a refused table may hold tenant rows: never shared"

    chosen = place(_cat(tables, fks), "orgs", {"shares": "user_id"})
    assert chosen.placed["shares"].spec.via == Hop("user_id", "users", "user_id")
    assert _reasons(chosen)["share_notes"][0] == "composite-only"
    assert "composite foreign key share_notes_user_id_project_id_fkey (user_id, project_id) -> shares" in \
        _reasons(chosen)["share_notes"][1]
    wrong = place(_cat(tables, fks), "orgs", {"shares": "owner"})
    assert "--choose shares=owner: not one of the columns of its shortest paths" in _reasons(wrong)["shares"][1]
    with pytest.raises(DiscoveryError, match=r"--choose nope=\.\.\.: no table app\.nope"):
        place(_cat(tables, fks), "orgs", {"nope": "x"})


def test_a_table_without_a_primary_key_is_refused_and_what_hangs_below_it_too() -> None:
    tables = [*BASE, _t("events", "event_id", "project_id", pk=(), unique=(("event_id",),)),
              _t("event_tags", "tag_id", "event_id"), _t("logs", "log_id", "org_id", pk=(), ident="i",
                                                          ident_key=("log_id",), unique=(("log_id",),))]
    fks = [*BASE_FKS, _fk("events", "project_id", "projects", "project_id"),
           _fk("event_tags", "event_id", "events", "event_id"), _fk("logs", "org_id", "orgs", "org_id")]
    draft = place(_cat(tables, fks), "orgs")
    kind, reason = _reasons(draft)["events"]
    assert kind == "no-primary-key"
    assert reason.startswith("app.events: no primary key: the change stream would carry no key for its updates")
    assert "event_id is unique and NOT NULL: make it the primary key" in reason
    assert _reasons(draft)["event_tags"] == ("through-refused", "reached only through app.events, refused itself (see there)")
    assert draft.placed["logs"].spec.key == ("log_id",), "a replica identity index is a key the stream carries"


def test_no_path_to_the_tenant_names_a_column_that_looks_like_the_tenant() -> None:
    tables = [*BASE, _t("audit", "audit_id", "org_id"), _t("settings", "name:text", "value:text")]
    draft = place(_cat(tables, BASE_FKS), "orgs")
    kind, reason = _reasons(draft)["audit"]
    assert kind == "no-path" and "it has a column org_id without a foreign key" in reason
    assert _reasons(draft)["settings"] == ("no-path", "no foreign-key path to the tenant root (platform-wide data, "
                                                      "left behind)")


def test_a_foreign_key_cycle_is_refused_but_a_self_reference_is_not() -> None:
    tables = [*BASE, _t("teams", "team_id", "org_id", "lead_id"), _t("members", "member_id", "team_id"),
              _t("folders", "folder_id", "project_id", "parent_id")]
    fks = [*BASE_FKS, _fk("teams", "org_id", "orgs", "org_id"), _fk("teams", "lead_id", "members", "member_id"),
           _fk("members", "team_id", "teams", "team_id"), _fk("folders", "project_id", "projects", "project_id"),
           _fk("folders", "parent_id", "folders", "folder_id")]
    draft = place(_cat(tables, fks), "orgs")
    assert {t for t, (k, _) in _reasons(draft).items() if k == "cycle"} == {"teams", "members"}
    assert "(teams.lead_id -> members, members.team_id -> teams)" in _reasons(draft)["teams"][1]
    assert "folders" in draft.placed


def test_the_root_must_exist_have_one_key_column_and_not_be_in_a_cycle() -> None:
    with pytest.raises(DiscoveryError, match=r"app\.org: no such table in schema 'app' \(its tables: orgs, plans"):
        place(_cat(BASE, BASE_FKS), "org")
    with pytest.raises(DiscoveryError, match="needs a single-column primary key"):
        place(_cat([_t("orgs", "a", "b", pk=("a", "b"))], []), "orgs")
    looped = [_t("orgs", "org_id", "owner:uuid"), _t("users", "user_id:uuid", "org_id")]
    with pytest.raises(DiscoveryError, match="the tenant root is in a foreign-key cycle"):
        place(_cat(looped, [_fk("orgs", "owner", "users", "user_id"), _fk("users", "org_id", "orgs", "org_id")]), "orgs")


def test_a_hop_to_a_unique_column_names_the_parent_column() -> None:
    tables = [*BASE, _t("channels", "project_id", "name:text", "channel_id", pk=("project_id", "name")),
              _t("alarms", "alarm_id", "channel_id")]
    fks = [*BASE_FKS, _fk("channels", "project_id", "projects", "project_id"),
           _fk("alarms", "channel_id", "channels", "channel_id")]
    found = draft_from(_cat(tables, fks), "orgs", "demo", "unit")
    assert "alarms:   {key: [alarm_id], via: {column: channel_id, table: channels, parent_column: channel_id}}" \
        in found.text
    assert "tasks:    {key: [task_id], via: {column: project_id, table: projects}}" in found.text
    assert found.tenant_map.tables["alarms"].via == Hop("channel_id", "channels", "channel_id")
    assert found.tenant_map.load_order()[0] == "orgs"


def test_the_rendered_text_loads_back_as_the_draft_with_refusals_as_comments() -> None:
    tables = [*BASE, _t("shares", "user_id:uuid", "project_id", pk=("user_id", "project_id")),
              _t("audit", "audit_id", "org_id")]
    fks = [*BASE_FKS, _fk("shares", "user_id", "users", "user_id"), _fk("shares", "project_id", "projects", "project_id")]
    found = draft_from(_cat(tables, fks), "orgs", "with space", "unit")
    assert found.tenant_map.tables == {n: p.spec for n, p in found.draft.placed.items()}
    assert found.tenant_map.shared_tables == ("plans",) and found.tenant_map.platform == "with space"
    assert "    # refused shares: reached two ways" in found.text
    assert "    #   shares: {key: [user_id, project_id], via: {column: user_id, table: users}}" in found.text
    assert "  # left behind audit: no foreign-key path" in found.text
    assert check_text(found.text) == found.tenant_map
    assert "refused app.shares" in found.summary() and "left behind app.audit" in found.summary()


CQL_BASE = [*BASE, _t("devices", "device_id:uuid", "project_id", "site:text"),
            _t("sensors", "device_id:uuid", "sensor:text", pk=("device_id", "sensor"))]
CQL_FKS = [*BASE_FKS, _fk("devices", "project_id", "projects", "project_id"),
           _fk("sensors", "device_id", "devices", "device_id")]


def _ks(*tables: CqlTableInfo):
    return draft_from(_cat(CQL_BASE, CQL_FKS), "orgs", "demo", "unit", keyspace="metrics", cql_tables=list(tables))


def test_cassandra_partition_keys_are_matched_to_the_rows_that_supply_them() -> None:
    found = _ks(CqlTableInfo("by_device", (("device_id", "uuid"),), 86_400 * 7),
                CqlTableInfo("by_site_day", (("site", "text"), ("device_id", "uuid"), ("day", "date")), 86_400 * 30 + 1),
                CqlTableInfo("by_sensor", (("device_id", "uuid"), ("sensor", "text"))))
    t = found.tenant_map.cassandra_tables
    assert (t["by_device"].partitions_from_table, t["by_device"].partitions_from_columns) == ("devices", ("device_id",)), \
        "the table whose primary key the columns hold, not sensors (several rows per device)"
    assert (t["by_site_day"].partitions_from_columns, t["by_site_day"].day_column) == (("site", "device_id"), "day")
    assert t["by_sensor"].partitions_from_table == "sensors"
    assert found.tenant_map.retention_days == 31 and "the default TTL of by_site_day (2592001 s)" in found.text


def test_a_cassandra_table_nothing_supplies_is_refused_naming_the_columns() -> None:
    found = _ks(CqlTableInfo("by_bucket", (("device_id", "uuid"), ("bucket", "int"))),
                CqlTableInfo("by_num", (("device_id", "bigint"),)),
                CqlTableInfo("fine", (("project_id", "bigint"),)))
    refused = {r.table: r.reason for r in found.keyspace.refused}
    assert refused["by_bucket"].startswith("partition-key column(s) bucket supplied neither by a tenant table's column")
    assert "closest: app.devices has device_id" in refused["by_bucket"]
    assert refused["by_num"].startswith("partition-key column(s) device_id supplied neither"), "uuid is not a bigint"
    assert list(found.tenant_map.cassandra_tables) == ["fine"]
    assert found.tenant_map.retention_days == 90 and "no table has a default TTL" in found.text
    assert "    # refused by_bucket: partition-key column(s) bucket" in found.text
