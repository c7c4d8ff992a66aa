"""The sample platform's relational dataset rendered as PostgreSQL ``COPY`` text, table by table, in
blocks (``sample.generate`` loads them)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tenant_migration.sample.data import (
    ACTION_KINDS,
    DASHBOARD_TITLES,
    DEVICE_KINDS,
    FIRST_NAMES,
    LAST_NAMES,
    PROPERTY_NAMES,
    PROPERTY_TYPES,
    PROPERTY_UNITS,
    RULE_OPS,
    SHARE_PERMISSIONS,
    USER_ROLES,
    VENDORS,
    Dataset,
    _uuid_strings,
)

# ------------------------------------------------------------------------------------ rendering


def _ts(epoch_s: np.ndarray) -> list[str]:
    return list(np.datetime_as_string(epoch_s.astype("datetime64[s]"), unit="s", timezone="UTC"))


def _str(values: np.ndarray) -> list[str]:
    return list(map(str, values.tolist()))


def _lookup(names: tuple[str, ...], idx: np.ndarray) -> list[str]:
    return [names[i] for i in idx.tolist()]


def _bool(values: np.ndarray) -> list[str]:
    return ["t" if v else "f" for v in values.tolist()]


def _render_columns(ds: Dataset, name: str) -> list[list[str]]:
    """Text columns of one table in COPY text format (``\\N`` is NULL)."""
    t = ds.tables[name].cols
    tenant = ds.tables[name].tenant
    slugs = [""] + [p.slug for p in ds.tenants]
    devices = ds.tables["devices"].cols
    props = ds.tables["properties"].cols
    if name == "device_models":
        kinds = _lookup(DEVICE_KINDS, t["kind"])
        vendors = _lookup(VENDORS, t["vendor"])
        return [_str(t["model_id"]), vendors,
                [f"{v} {k.title()} {i}" for v, k, i in zip(vendors, kinds, t["model_id"].tolist(), strict=True)],
                _ts(t["updated_at"])]
    if name == "firmware_releases":
        return [_str(t["release_id"]), _str(t["model_id"]),
                [f"{a}.{b}.{c}" for a, b, c in zip(t["major"].tolist(), t["minor"].tolist(),
                                                   t["release_id"].tolist(), strict=True)],
                _ts(t["released_at"]), _ts(t["updated_at"])]
    if name == "tenants":
        return [_str(t["tenant_id"]), [p.slug for p in ds.tenants], [p.name for p in ds.tenants],
                [p.plan for p in ds.tenants], _ts(t["created_at"]), _ts(t["updated_at"])]
    if name == "tenant_settings":
        n = len(tenant)
        return [_str(t["tenant_id"]), ["t"] * n, ["\\N"] * n, ["\\N"] * n, _str(t["retention"]),
                _ts(t["updated_at"])]
    if name == "users":
        idx = t["index"].tolist()
        return [list(ds.user_uuids), _str(tenant),
                [f"user{i}@{slugs[s]}.example.com" for i, s in zip(idx, tenant.tolist(), strict=True)],
                [f"{FIRST_NAMES[a]} {LAST_NAMES[b]}" for a, b in zip(t["first"].tolist(), t["last"].tolist(), strict=True)],
                _lookup(USER_ROLES, t["role"]), _ts(t["created_at"]), _ts(t["updated_at"])]
    if name == "api_keys":
        hashes = t["key_hash"].tobytes().hex()
        return [_uuid_strings(t["api_key_id"]), _str(tenant), [f"key-{i}" for i in t["index"].tolist()],
                [hashes[i:i + 64] for i in range(0, len(hashes), 64)],
                _ts(t["created_at"]), _ts(t["updated_at"])]
    if name == "devices":
        idx = t["index"].tolist()
        kinds = [DEVICE_KINDS[i % len(DEVICE_KINDS)] for i in idx]
        firmware = ["\\N" if v < 0 else str(v) for v in t["firmware_id"].tolist()]
        return [_str(t["device_id"]), _str(tenant), [f"SN-{i:08d}" for i in idx], _str(t["model_id"]), firmware,
                [f"{k} {i}" for k, i in zip(kinds, idx, strict=True)],
                ["active" if a else "background" for a in t["active"].tolist()],
                _ts(t["created_at"]), _ts(t["updated_at"])]
    if name == "device_registrations":
        return [_uuid_strings(t["registration_id"]), _str(devices["device_id"][t["device"]]),
                [ds.user_uuids[u] for u in t["user"].tolist()],
                ["revoked" if r else "active" for r in t["revoked"].tolist()],
                _ts(t["registered_at"]), _ts(t["updated_at"])]
    if name == "device_shares":
        return [[ds.user_uuids[u] for u in t["user"].tolist()], _str(devices["device_id"][t["device"]]),
                _lookup(SHARE_PERMISSIONS, t["permission"]), _ts(t["updated_at"])]
    if name == "properties":
        ordinal = t["ordinal"]
        return [_str(t["property_id"]), _str(devices["device_id"][t["device"]]), _lookup(PROPERTY_NAMES, ordinal),
                _lookup(PROPERTY_TYPES, ordinal), _lookup(PROPERTY_UNITS, ordinal), _ts(t["updated_at"])]
    if name == "rules":
        names = _lookup(PROPERTY_NAMES, props["ordinal"][t["prop"]])
        return [_str(t["rule_id"]), _str(props["property_id"][t["prop"]]),
                [f"{n} {RULE_OPS[o]} threshold" for n, o in zip(names, t["op"].tolist(), strict=True)],
                _str(t["threshold"]), _bool(t["enabled"]), _ts(t["updated_at"])]
    if name == "rule_actions":
        rule_ids = ds.tables["rules"].cols["rule_id"][t["rule"]].tolist()
        targets = []
        for rid, kind, s in zip(rule_ids, t["kind"].tolist(), tenant.tolist(), strict=True):
            if kind == 0:
                targets.append(f"alerts+r{rid}@{slugs[s]}.example.com")
            elif kind == 1:
                targets.append(f"https://hooks.{slugs[s]}.example.com/rules/{rid}")
            elif kind == 2:
                targets.append(f"+1555{abs(rid) % 10_000_000:07d}")
            else:
                targets.append(f"{slugs[s]}/alerts/{rid}")
        return [_str(np.asarray(rule_ids, dtype=np.int64)), _str(t["action_no"]), _lookup(ACTION_KINDS, t["kind"]),
                targets, _ts(t["updated_at"])]
    if name == "dashboards":
        widget_ids = props["property_id"][t["widget_props"]].tolist() if len(tenant) else []
        layouts = []
        for count, pids in zip(t["widget_count"].tolist(), widget_ids, strict=True):
            widgets = ", ".join(
                f'{{"type": "chart", "property_id": {pid}, "x": {6 * (j % 2)}, "y": {4 * (j // 2)}, "w": 6, "h": 4}}'
                for j, pid in enumerate(pids[:count])
            )
            layouts.append(f'{{"columns": 12, "widgets": [{widgets}]}}')
        return [_str(t["dashboard_id"]), [ds.user_uuids[u] for u in t["user"].tolist()],
                _lookup(DASHBOARD_TITLES, t["title"]), layouts, _ts(t["updated_at"])]
    raise KeyError(name)


def copy_blocks(ds: Dataset, name: str, rows_per_block: int = 50_000) -> Iterator[str]:
    """COPY ... FROM STDIN text of one table in blocks, ready for ``copy.write``.

    No generated value contains a tab, newline or backslash, so no escaping is needed; the assert
    keeps it that way.
    """
    columns = _render_columns(ds, name)
    rows = ["\t".join(r) for r in zip(*columns, strict=True)]
    for start in range(0, len(rows), rows_per_block):
        block = "\n".join(rows[start:start + rows_per_block]) + "\n"
        assert "\\" not in block.replace("\\N", ""), f"unescaped backslash in {name}"
        yield block
