"""Deterministic rows of the sample platform, built without any database.

Everything here is a pure function of ``(preset, seed)``, plus ``today`` for the Cassandra time series:
the same inputs give byte-identical COPY text and identical Cassandra rows, so tests can predict every
count (``expected_counts``) and two runs can be compared.

Shape of the data, chosen to exercise the migration rather than to look pretty:

* 24 tenants with Zipf-like sizes. Tenant ``BIG_TENANT_ID`` holds about 40 % of all rows, tenant
  ``EMPTY_TENANT_ID`` has only its ``tenants`` and ``tenant_settings`` rows, and ``test-pool``
  (``TEST_POOL_TENANT_ID``) is small and meant for rehearsals.
* Keys are interleaved across tenants: tenants are assigned to devices, users, properties, rules and
  dashboards by a shuffled draw, so any key range of any table mixes many tenants.
* Bigint keys are awkward on purpose: devices, properties and rules start below zero (0 and negative
  keys exist), and with ``Preset.key_outliers`` devices also have a hole of a million ids in the middle
  and two outliers at -2**40 and +2**40, so a planner that splits ``[min, max]`` evenly gets mostly
  empty chunks. Users also get the nil and the all-ones UUID.
* Relational timestamps are fixed relative to ``BASE_TIME`` (2026-01-01), so they never depend on the
  day of generation.
* Cassandra time series are relative to ``today``: ``Preset.days`` full UTC day buckets ending
  yesterday (never in the future, so the platform's own later writes always win). Every row's
  writetime (``USING TIMESTAMP``) is its ``ts`` in microseconds, and its TTL is computed at write
  time so that it expires at ``ts + retention`` (the tenant's ``data_retention_days`` for
  datapoints, ``CONNECTION_EVENT_RETENTION_DAYS`` for connection events); rows already expired are
  skipped. Retentions are at least 14 days and windows at most a few days, so nothing is skipped
  when generating, and the data stays complete until ``valid_until``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import numpy as np

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
BASE_EPOCH = int(BASE_TIME.timestamp())
DAY_S = 86_400
DAY_MS = DAY_S * 1000

TENANT_COUNT = 24
BIG_TENANT_ID = 1
TEST_POOL_TENANT_ID = 5
EMPTY_TENANT_ID = 17
TEST_POOL_SLUG = "test-pool"
BIG_SHARE = 0.40
TEST_POOL_SHARE = 0.004
ZIPF_EXPONENT = 1.0
MIN_DEVICES = 3
USERS_PER_DEVICE = 0.35
API_KEYS_PER_DEVICE = 0.05
CONNECTION_EVENT_RETENTION_DAYS = 30
MAX_BATCH_ROWS = 50

SHARED_TABLES: tuple[str, ...] = ("device_models", "firmware_releases")
TENANT_TABLES: tuple[str, ...] = (
    "tenants",
    "tenant_settings",
    "users",
    "api_keys",
    "devices",
    "device_registrations",
    "device_shares",
    "properties",
    "rules",
    "rule_actions",
    "dashboards",
)
PG_TABLES: tuple[str, ...] = SHARED_TABLES + TENANT_TABLES
CASSANDRA_TABLES: tuple[str, ...] = ("datapoints", "latest_values", "connection_events")
ALWAYS_PRESENT: tuple[str, ...] = ("tenants", "tenant_settings")

COLUMNS: dict[str, tuple[str, ...]] = {
    "device_models": ("model_id", "vendor", "name", "updated_at"),
    "firmware_releases": ("release_id", "model_id", "version", "released_at", "updated_at"),
    "tenants": ("tenant_id", "slug", "name", "plan", "created_at", "updated_at"),
    "tenant_settings": (
        "tenant_id",
        "registrations_enabled",
        "registrations_suspended_until",
        "suspension_reason",
        "data_retention_days",
        "updated_at",
    ),
    "users": ("user_id", "tenant_id", "email", "display_name", "role", "created_at", "updated_at"),
    "api_keys": ("api_key_id", "tenant_id", "label", "key_hash", "created_at", "updated_at"),
    "devices": (
        "device_id",
        "tenant_id",
        "serial",
        "model_id",
        "firmware_id",
        "name",
        "mode",
        "created_at",
        "updated_at",
    ),
    "device_registrations": ("registration_id", "device_id", "user_id", "status", "registered_at", "updated_at"),
    "device_shares": ("user_id", "device_id", "permission", "updated_at"),
    "properties": ("property_id", "device_id", "name", "data_type", "unit", "updated_at"),
    "rules": ("rule_id", "property_id", "expression", "threshold", "enabled", "updated_at"),
    "rule_actions": ("rule_id", "action_no", "kind", "target", "updated_at"),
    "dashboards": ("dashboard_id", "user_id", "title", "layout", "updated_at"),
}

TENANT_SLUGS: tuple[str, ...] = (
    "megagrid",
    "acme-sensors",
    "globex-farms",
    "initech-hvac",
    TEST_POOL_SLUG,
    "umbrella-cold-chain",
    "hooli-homes",
    "stark-industrial",
    "wayne-logistics",
    "tyrell-greenhouses",
    "soylent-water",
    "cyberdyne-fleet",
    "aperture-labs",
    "vandelay-imports",
    "wonka-factories",
    "oscorp-metering",
    "dormant-co",
    "blue-sun-mining",
    "monarch-solar",
    "gringotts-vaults",
    "nakatomi-towers",
    "pied-piper-iot",
    "duff-breweries",
    "prestige-hotels",
)
PLAN_RETENTION_DAYS: dict[str, int] = {"enterprise": 90, "business": 30, "starter": 14, "internal": 14}

PROPERTY_NAMES = ("temperature", "humidity", "battery", "rssi", "power", "pressure")
PROPERTY_UNITS = ("C", "%", "%", "dBm", "W", "hPa")
PROPERTY_TYPES = ("double", "double", "double", "integer", "double", "double")
PROPERTY_BASE = np.array([21.0, 45.0, 80.0, -70.0, 150.0, 1013.0])
PROPERTY_SWING = np.array([4.0, 10.0, 5.0, 6.0, 80.0, 6.0])
PROPERTY_NOISE = np.array([0.3, 1.5, 0.2, 2.0, 10.0, 0.5])
VENDORS = ("Bosch", "Siemens", "Honeywell", "Schneider", "ABB", "Danfoss", "Tuya", "Shelly", "Aqara", "Netatmo")
DEVICE_KINDS = ("thermostat", "meter", "sensor", "gateway", "plug", "valve", "camera", "tracker")
FIRST_NAMES = ("Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger")
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen")
USER_ROLES = ("admin", "member", "viewer")
SHARE_PERMISSIONS = ("read", "write", "admin")
RULE_OPS = (">", "<", ">=", "<=")
ACTION_KINDS = ("email", "webhook", "sms", "push")
DASHBOARD_TITLES = ("Overview", "Energy", "Climate", "Alarms", "Fleet", "Night shift")
CONNECTION_EVENTS = ("connect", "disconnect")


@dataclass(frozen=True)
class Preset:
    """Size of one generated platform.

    ``devices`` drives everything relational (about 13 PostgreSQL rows per device); the Cassandra volume
    is ``devices * telemetry_share`` reporting devices times their ~4 properties times
    ``days * points_per_day`` datapoints.
    """

    name: str
    devices: int
    telemetry_share: float
    days: int
    points_per_day: int
    events_per_day: int
    device_models: int = 50
    firmware_releases: int = 200
    key_outliers: bool = True


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", devices=1_800, telemetry_share=0.25, days=2, points_per_day=24, events_per_day=4),
    "demo": Preset("demo", devices=75_000, telemetry_share=0.11, days=3, points_per_day=48, events_per_day=4),
    "bench": Preset("bench", devices=300_000, telemetry_share=0.11, days=3, points_per_day=48, events_per_day=4),
}


@dataclass(frozen=True)
class TenantPlan:
    """How big one tenant is; everything else about it follows from these numbers and the seed."""

    tenant_id: int
    slug: str
    name: str
    plan: str
    retention_days: int
    devices: int
    users: int
    api_keys: int
    telemetry_devices: int

    @property
    def empty(self) -> bool:
        return self.devices == 0


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    """One independent generator per table (stream), so changing one table never reshuffles another."""
    return np.random.default_rng([seed, stream, *more])


@lru_cache(maxsize=8)
def plan_tenants(preset: Preset, seed: int) -> tuple[TenantPlan, ...]:
    """Per-tenant sizes: the big tenant at ``BIG_SHARE``, test-pool tiny, the rest Zipf by a seeded rank."""
    rng = _rng(seed, 1)
    special = {BIG_TENANT_ID, TEST_POOL_TENANT_ID, EMPTY_TENANT_ID}
    tail = [t for t in range(1, TENANT_COUNT + 1) if t not in special]
    ranks = rng.permutation(len(tail)) + 1
    weights = 1.0 / ranks.astype(float) ** ZIPF_EXPONENT
    weights *= (1.0 - BIG_SHARE - TEST_POOL_SHARE) / weights.sum()
    share = {t: float(w) for t, w in zip(tail, weights, strict=True)}
    share[TEST_POOL_TENANT_ID] = TEST_POOL_SHARE
    devices = {t: max(MIN_DEVICES, round(s * preset.devices)) for t, s in share.items()}
    devices[EMPTY_TENANT_ID] = 0
    devices[BIG_TENANT_ID] = preset.devices - sum(devices.values())
    if devices[BIG_TENANT_ID] < MIN_DEVICES:
        raise ValueError(f"preset {preset.name} has too few devices ({preset.devices}) for {TENANT_COUNT} tenants")
    business = set(sorted(tail, key=lambda t: -devices[t])[:5])
    plans: list[TenantPlan] = []
    for t in range(1, TENANT_COUNT + 1):
        if t == BIG_TENANT_ID:
            plan = "enterprise"
        elif t == TEST_POOL_TENANT_ID:
            plan = "internal"
        elif t in business:
            plan = "business"
        else:
            plan = "starter"
        n = devices[t]
        slug = TENANT_SLUGS[t - 1]
        plans.append(
            TenantPlan(
                tenant_id=t,
                slug=slug,
                name=slug.replace("-", " ").title(),
                plan=plan,
                retention_days=PLAN_RETENTION_DAYS[plan],
                devices=n,
                users=0 if n == 0 else max(2, round(n * USERS_PER_DEVICE)),
                api_keys=0 if n == 0 else max(1, round(n * API_KEYS_PER_DEVICE)),
                telemetry_devices=0 if n == 0 else min(n, max(1, round(n * preset.telemetry_share))),
            )
        )
    return tuple(plans)


@dataclass(frozen=True)
class Table:
    """Rows of one PostgreSQL table as column arrays; ``tenant`` is each row's tenant (0 for shared)."""

    name: str
    tenant: np.ndarray
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.tenant)


@dataclass(frozen=True)
class Telemetry:
    """Which devices report, and their properties, in the order Cassandra rows are produced."""

    device_id: np.ndarray
    device_tenant: np.ndarray
    device_index: np.ndarray
    prop_id: np.ndarray
    prop_device_id: np.ndarray
    prop_ordinal: np.ndarray
    prop_tenant: np.ndarray
    prop_retention_days: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """All relational rows of one ``(preset, seed)`` and the telemetry selection."""

    preset: Preset
    seed: int
    tenants: tuple[TenantPlan, ...]
    tables: dict[str, Table]
    user_uuids: tuple[str, ...]
    telemetry: Telemetry

    def slug(self, tenant_id: int) -> str:
        return self.tenants[tenant_id - 1].slug


# ------------------------------------------------------------------------------------ helpers


def _per_tenant(plans: tuple[TenantPlan, ...], attr: str) -> np.ndarray:
    """Array indexed by tenant id (index 0 unused) of one TenantPlan attribute."""
    out = np.zeros(TENANT_COUNT + 1, dtype=np.int64)
    for p in plans:
        out[p.tenant_id] = getattr(p, attr)
    return out


def _assign_tenants(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Tenant of each row, shuffled: this is what interleaves tenants across the key space."""
    return rng.permutation(np.repeat(np.arange(len(counts), dtype=np.int64), counts))


def _rank_within_tenant(rng: np.random.Generator, tenant: np.ndarray) -> np.ndarray:
    """A random rank 0..n-1 of each row among the rows of its tenant (rank 0 is the tenant's anchor)."""
    order = np.lexsort((rng.random(len(tenant)), tenant))
    sorted_tenant = tenant[order]
    starts = np.searchsorted(sorted_tenant, sorted_tenant, side="left")
    rank = np.empty(len(tenant), dtype=np.int64)
    rank[order] = np.arange(len(tenant)) - starts
    return rank


def _group_index(tenant: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows sorted by tenant, start offset per tenant id, count per tenant id) for random picks."""
    order = np.argsort(tenant, kind="stable")
    counts = np.bincount(tenant, minlength=TENANT_COUNT + 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return order, starts, counts


def _pick(rng: np.random.Generator, group: tuple[np.ndarray, np.ndarray, np.ndarray], tenant: np.ndarray) -> np.ndarray:
    """One random row of the same tenant for each entry of ``tenant``."""
    order, starts, counts = group
    offset = (rng.random(len(tenant)) * counts[tenant]).astype(np.int64)
    return order[starts[tenant] + offset]


def _random_uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Version-4 UUID bytes drawn from the seeded generator (deterministic, unlike uuid4)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return raw


def _uuid_strings(raw: np.ndarray) -> list[str]:
    h = raw.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, len(h), 32)]


def _created(rng: np.random.Generator, n: int, max_age_days: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(created_at, updated_at) epoch seconds before BASE_TIME, updated never before created."""
    created = BASE_EPOCH - rng.integers(DAY_S, max_age_days * DAY_S, n)
    updated = created + (rng.random(n) * (BASE_EPOCH - created)).astype(np.int64)
    return created, updated


def _negative_start(n: int) -> int:
    """How far below zero a bigint key sequence starts: a handful of keys <= 0 in every preset."""
    return max(3, n // 500)


# ------------------------------------------------------------------------------------ building


@lru_cache(maxsize=2)
def build_dataset(preset: Preset, seed: int) -> Dataset:
    """All PostgreSQL rows of ``(preset, seed)`` as column arrays, plus the telemetry selection."""
    plans = plan_tenants(preset, seed)
    tables: dict[str, Table] = {}
    tids = np.arange(1, TENANT_COUNT + 1, dtype=np.int64)
    zeros = np.zeros

    m, f = preset.device_models, preset.firmware_releases
    if f % m:
        raise ValueError("firmware_releases must be a multiple of device_models")
    rng = _rng(seed, 2)
    model_ids = np.arange(1, m + 1, dtype=np.int64)
    tables["device_models"] = Table("device_models", zeros(m, np.int64), {
        "model_id": model_ids,
        "vendor": rng.integers(0, len(VENDORS), m),
        "kind": rng.integers(0, len(DEVICE_KINDS), m),
        "updated_at": BASE_EPOCH - rng.integers(DAY_S, 900 * DAY_S, m),
    })
    release_ids = np.arange(1, f + 1, dtype=np.int64)
    tables["firmware_releases"] = Table("firmware_releases", zeros(f, np.int64), {
        "release_id": release_ids,
        "model_id": (release_ids - 1) % m + 1,
        "major": (release_ids - 1) // m + 1,
        "minor": rng.integers(0, 20, f),
        "released_at": BASE_EPOCH - (f - release_ids) * 3 * DAY_S - rng.integers(0, DAY_S, f),
        "updated_at": BASE_EPOCH - rng.integers(0, 30 * DAY_S, f),
    })

    rng = _rng(seed, 3)
    t_created = BASE_EPOCH - (800 - 20 * tids) * DAY_S
    tables["tenants"] = Table("tenants", tids.copy(), {
        "tenant_id": tids,
        "created_at": t_created,
        "updated_at": t_created + rng.integers(0, 300 * DAY_S, TENANT_COUNT),
    })
    tables["tenant_settings"] = Table("tenant_settings", tids.copy(), {
        "tenant_id": tids,
        "retention": _per_tenant(plans, "retention_days")[1:],
        "updated_at": BASE_EPOCH - rng.integers(0, 60 * DAY_S, TENANT_COUNT),
    })

    rng = _rng(seed, 4)
    user_tenant = _assign_tenants(rng, _per_tenant(plans, "users"))
    n_users = len(user_tenant)
    user_raw = _random_uuids(rng, n_users)
    if preset.key_outliers and n_users >= 2:
        user_raw[0, :] = 0x00
        user_raw[-1, :] = 0xFF
    created, updated = _created(rng, n_users)
    tables["users"] = Table("users", user_tenant, {
        "index": np.arange(n_users, dtype=np.int64),
        "first": rng.integers(0, len(FIRST_NAMES), n_users),
        "last": rng.integers(0, len(LAST_NAMES), n_users),
        "role": rng.choice(3, n_users, p=[0.1, 0.6, 0.3]),
        "created_at": created,
        "updated_at": updated,
    })
    user_uuids = tuple(_uuid_strings(user_raw))
    user_group = _group_index(user_tenant)
    user_rank = _rank_within_tenant(rng, user_tenant)

    rng = _rng(seed, 5)
    key_tenant = _assign_tenants(rng, _per_tenant(plans, "api_keys"))
    n_keys = len(key_tenant)
    created, updated = _created(rng, n_keys)
    tables["api_keys"] = Table("api_keys", key_tenant, {
        "api_key_id": _random_uuids(rng, n_keys),
        "key_hash": np.frombuffer(rng.bytes(32 * n_keys), dtype=np.uint8).reshape(n_keys, 32),
        "index": np.arange(n_keys, dtype=np.int64),
        "created_at": created,
        "updated_at": updated,
    })

    rng = _rng(seed, 6)
    dev_tenant = _assign_tenants(rng, _per_tenant(plans, "devices"))
    n_dev = len(dev_tenant)
    device_id = np.arange(n_dev, dtype=np.int64) - _negative_start(n_dev)
    if preset.key_outliers and n_dev >= 4:
        device_id[n_dev // 2:] += 1_000_000
        device_id[0] = -(2**40)
        device_id[-1] = 2**40
    dev_model = rng.integers(1, m + 1, n_dev)
    firmware = dev_model + m * rng.integers(0, f // m, n_dev)
    firmware[rng.random(n_dev) < 0.05] = -1
    created, updated = _created(rng, n_dev)
    tables["devices"] = Table("devices", dev_tenant, {
        "device_id": device_id,
        "index": np.arange(n_dev, dtype=np.int64),
        "model_id": dev_model,
        "firmware_id": firmware,
        "active": rng.random(n_dev) < 0.2,
        "created_at": created,
        "updated_at": updated,
    })
    dev_rank = _rank_within_tenant(rng, dev_tenant)
    anchor_device = dev_rank == 0
    telemetry_device = dev_rank < _per_tenant(plans, "telemetry_devices")[dev_tenant]

    rng = _rng(seed, 7)
    per_dev = 1 + (rng.random(n_dev) < 0.1)
    reg_dev = np.repeat(np.arange(n_dev), per_dev)
    reg_second = np.zeros(len(reg_dev), dtype=bool)
    reg_second[1:] = reg_dev[1:] == reg_dev[:-1]
    n_reg = len(reg_dev)
    reg_at = tables["devices"].cols["created_at"][reg_dev] + rng.integers(0, 30 * DAY_S, n_reg)
    reg_at = np.where(reg_second, reg_at - 200 * DAY_S, reg_at)
    tables["device_registrations"] = Table("device_registrations", dev_tenant[reg_dev], {
        "registration_id": _random_uuids(rng, n_reg),
        "device": reg_dev,
        "user": _pick(rng, user_group, dev_tenant[reg_dev]),
        "revoked": reg_second,
        "registered_at": reg_at,
        "updated_at": np.minimum(reg_at + rng.integers(0, 90 * DAY_S, n_reg), BASE_EPOCH),
    })

    rng = _rng(seed, 8)
    k_share = rng.choice(3, n_dev, p=[0.45, 0.45, 0.10])
    k_share[anchor_device & (k_share == 0)] = 1
    n_t = user_group[2][dev_tenant]
    first = (rng.random(n_dev) * n_t).astype(np.int64)
    second = (first + 1 + (rng.random(n_dev) * (n_t - 1)).astype(np.int64)) % n_t
    share_dev = np.concatenate([np.nonzero(k_share >= 1)[0], np.nonzero(k_share == 2)[0]])
    share_off = np.concatenate([first[k_share >= 1], second[k_share == 2]])
    order = np.argsort(share_dev, kind="stable")
    share_dev, share_off = share_dev[order], share_off[order]
    share_tenant = dev_tenant[share_dev]
    share_user = user_group[0][user_group[1][share_tenant] + share_off]
    n_share = len(share_dev)
    tables["device_shares"] = Table("device_shares", share_tenant, {
        "user": share_user,
        "device": share_dev,
        "permission": rng.choice(3, n_share, p=[0.7, 0.25, 0.05]),
        "updated_at": BASE_EPOCH - rng.integers(0, 200 * DAY_S, n_share),
    })

    rng = _rng(seed, 9)
    k_prop = rng.integers(2, len(PROPERTY_NAMES) + 1, n_dev)
    prop_dev = np.repeat(np.arange(n_dev), k_prop)
    n_prop = len(prop_dev)
    prop_start = np.concatenate(([0], np.cumsum(k_prop)[:-1]))
    prop_ordinal = np.arange(n_prop) - np.repeat(prop_start, k_prop)
    prop_id = rng.permutation(n_prop).astype(np.int64) - _negative_start(n_prop)
    prop_tenant = dev_tenant[prop_dev]
    tables["properties"] = Table("properties", prop_tenant, {
        "property_id": prop_id,
        "device": prop_dev,
        "ordinal": prop_ordinal,
        "updated_at": BASE_EPOCH - rng.integers(0, 300 * DAY_S, n_prop),
    })

    rng = _rng(seed, 10)
    has_rule = rng.random(n_prop) < 0.5
    has_rule[np.repeat(anchor_device, k_prop) & (prop_ordinal == 0)] = True
    rule_prop = np.nonzero(has_rule)[0]
    n_rule = len(rule_prop)
    rule_id = rng.permutation(n_rule).astype(np.int64) - _negative_start(n_rule)
    ordinal = prop_ordinal[rule_prop]
    threshold = np.round(PROPERTY_BASE[ordinal] + PROPERTY_SWING[ordinal] * rng.normal(0, 1, n_rule), 2)
    tables["rules"] = Table("rules", prop_tenant[rule_prop], {
        "rule_id": rule_id,
        "prop": rule_prop,
        "op": rng.integers(0, len(RULE_OPS), n_rule),
        "threshold": threshold,
        "enabled": rng.random(n_rule) < 0.9,
        "updated_at": BASE_EPOCH - rng.integers(0, 200 * DAY_S, n_rule),
    })

    rng = _rng(seed, 11)
    k_act = rng.integers(1, 4, n_rule)
    act_rule = np.repeat(np.arange(n_rule), k_act)
    act_start = np.concatenate(([0], np.cumsum(k_act)[:-1]))
    n_act = len(act_rule)
    tables["rule_actions"] = Table("rule_actions", prop_tenant[rule_prop][act_rule], {
        "rule": act_rule,
        "action_no": np.arange(n_act) - np.repeat(act_start, k_act) + 1,
        "kind": rng.integers(0, len(ACTION_KINDS), n_act),
        "updated_at": BASE_EPOCH - rng.integers(0, 200 * DAY_S, n_act),
    })

    rng = _rng(seed, 12)
    k_dash = rng.choice(3, n_users, p=[0.6, 0.3, 0.1])
    k_dash[(user_rank == 0) & (k_dash == 0)] = 1
    dash_user = np.repeat(np.arange(n_users), k_dash)
    n_dash = len(dash_user)
    dash_tenant = user_tenant[dash_user]
    prop_group = _group_index(prop_tenant)
    widgets = np.stack([_pick(rng, prop_group, dash_tenant) for _ in range(3)], axis=1) if n_dash else zeros((0, 3), np.int64)
    tables["dashboards"] = Table("dashboards", dash_tenant, {
        "dashboard_id": rng.permutation(n_dash).astype(np.int64) + 1,
        "user": dash_user,
        "title": rng.integers(0, len(DASHBOARD_TITLES), n_dash),
        "widget_count": rng.integers(1, 4, n_dash),
        "widget_props": widgets,
        "updated_at": BASE_EPOCH - rng.integers(0, 100 * DAY_S, n_dash),
    })

    tel_dev = np.nonzero(telemetry_device)[0]
    tel_prop = np.nonzero(telemetry_device[prop_dev])[0]
    retention = _per_tenant(plans, "retention_days")
    telemetry = Telemetry(
        device_id=device_id[tel_dev],
        device_tenant=dev_tenant[tel_dev],
        device_index=tel_dev,
        prop_id=prop_id[tel_prop],
        prop_device_id=device_id[prop_dev[tel_prop]],
        prop_ordinal=prop_ordinal[tel_prop],
        prop_tenant=prop_tenant[tel_prop],
        prop_retention_days=retention[prop_tenant[tel_prop]],
    )
    return Dataset(preset, seed, plans, tables, user_uuids, telemetry)


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


# ------------------------------------------------------------------------------------ Cassandra


def day_buckets(preset: Preset, today: date) -> tuple[date, ...]:
    """The UTC day buckets that hold datapoints: ``preset.days`` full days ending yesterday."""
    return tuple(today - timedelta(days=preset.days - k) for k in range(preset.days))


def _day_ms(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_MS


def cql_date(day: date) -> int:
    """The driver's raw encoding of a CQL ``date`` (days since epoch, offset by 2**31)."""
    return (day - date(1970, 1, 1)).days + 2**31


def valid_until(preset: Preset, seed: int, today: date) -> datetime:
    """When the first generated Cassandra row expires: after it the data is no longer complete."""
    first = datetime.combine(day_buckets(preset, today)[0], datetime.min.time(), tzinfo=UTC)
    retentions = [p.retention_days for p in plan_tenants(preset, seed) if p.telemetry_devices]
    return first + timedelta(days=min([*retentions, CONNECTION_EVENT_RETENTION_DAYS]))


@dataclass(frozen=True)
class Rows:
    """Rows of one Cassandra table, as columns in the bind order of its INSERT (values, then TTL if
    any, then writetime). ``starts`` are the offsets where a new partition begins; rows of a partition
    are contiguous."""

    columns: dict[str, np.ndarray]
    starts: np.ndarray

    def __len__(self) -> int:
        first = next(iter(self.columns.values()))
        return len(first)

    def partitions(self) -> list[tuple[int, int]]:
        """(start, end) row offsets of each partition."""
        bounds = [*self.starts.tolist(), len(self)]
        return list(itertools.pairwise(bounds))

    def tuples(self) -> list[tuple[object, ...]]:
        """Rows as Python tuples (for comparisons and the driver's public bind path)."""
        return list(zip(*(c.tolist() for c in self.columns.values()), strict=True))


@dataclass(frozen=True)
class CassandraChunk:
    """The rows of one slice of the telemetry."""

    datapoints: Rows
    latest_values: Rows
    connection_events: Rows
    skipped_expired: int

    def tables(self) -> dict[str, Rows]:
        return {"datapoints": self.datapoints, "latest_values": self.latest_values,
                "connection_events": self.connection_events}


PROPS_PER_CHUNK = 512


def cassandra_chunk_count(ds: Dataset) -> int:
    return max(1, math.ceil(len(ds.telemetry.prop_id) / PROPS_PER_CHUNK))


def _starts(*keys: np.ndarray) -> np.ndarray:
    """Offsets where any of the (row-aligned) key columns changes: partition starts."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.nonzero(change)[0]


def cassandra_chunk(ds: Dataset, chunk_no: int, today: date, now_s: int | None = None) -> CassandraChunk:
    """Rows of chunk ``chunk_no``: datapoints and latest values of a slice of ``PROPS_PER_CHUNK``
    telemetry properties, and connection events of the devices whose first property is in the slice.

    Values depend on ``(seed, chunk_no)`` only, timestamps on ``today`` too, TTLs on the clock
    (``now_s``): a row whose TTL would be <= 0 is left out and counted in ``skipped_expired``.
    """
    preset, tel = ds.preset, ds.telemetry
    now_s = int(datetime.now(UTC).timestamp()) if now_s is None else now_s
    rng = _rng(ds.seed, 100, chunk_no)
    sl = slice(chunk_no * PROPS_PER_CHUNK, (chunk_no + 1) * PROPS_PER_CHUNK)
    pid, dev, ordinal = tel.prop_id[sl], tel.prop_device_id[sl], tel.prop_ordinal[sl]
    retention_s = tel.prop_retention_days[sl] * DAY_S
    n, days, ppd = len(pid), preset.days, preset.points_per_day
    buckets = day_buckets(preset, today)
    day_ms = np.array([_day_ms(d) for d in buckets], dtype=np.int64)
    dates = np.array([cql_date(d) for d in buckets], dtype=np.int64)
    shape = (n, days, ppd)
    interval = DAY_MS // ppd
    offsets = np.arange(ppd, dtype=np.int64) * interval
    ts = day_ms[None, :, None] + offsets[None, None, :] + rng.integers(0, interval // 4, shape)
    phase = rng.random(n) * 2 * math.pi
    angle = 2 * math.pi * (offsets / DAY_MS)[None, None, :] + phase[:, None, None]
    values = (PROPERTY_BASE[ordinal][:, None, None] + PROPERTY_SWING[ordinal][:, None, None] * np.sin(angle)
              + PROPERTY_NOISE[ordinal][:, None, None] * rng.normal(0, 1, shape))
    values = np.where((ordinal == 3)[:, None, None], np.round(values), np.round(values, 3))
    quality = rng.choice(3, shape, p=[0.95, 0.04, 0.01]).astype(np.int8)
    ttl = (ts // 1000 + retention_s[:, None, None]) - now_s
    keep = (ttl > 0).ravel()
    dev_col = np.broadcast_to(dev[:, None, None], shape).ravel()[keep]
    pid_col = np.broadcast_to(pid[:, None, None], shape).ravel()[keep]
    day_col = np.broadcast_to(dates[None, :, None], shape).ravel()[keep]
    ts_col = ts.ravel()[keep]
    datapoints = Rows(
        {"device_id": dev_col, "property_id": pid_col, "day": day_col, "ts": ts_col,
         "value": values.ravel()[keep], "quality": quality.ravel()[keep], "ttl": ttl.ravel()[keep],
         "writetime": ts_col * 1000},
        _starts(dev_col, pid_col, day_col),
    )
    latest_ts = ts[:, -1, -1]
    latest = Rows(
        {"device_id": dev, "property_id": pid, "ts": latest_ts, "value": values[:, -1, -1],
         "writetime": latest_ts * 1000},
        _starts(dev),
    )
    first_of_device = np.ones(n, dtype=bool)
    if chunk_no > 0 and n:
        first_of_device[0] = tel.prop_device_id[sl.start - 1] != dev[0]
    first_of_device[1:] = dev[1:] != dev[:-1]
    events, skipped_events = _connection_events(ds, chunk_no, dev[first_of_device], buckets, now_s)
    return CassandraChunk(datapoints, latest, events, int(keep.size - keep.sum()) + skipped_events)


def _connection_events(ds: Dataset, chunk_no: int, devices: np.ndarray, buckets: tuple[date, ...],
                       now_s: int) -> tuple[Rows, int]:
    """A few connect/disconnect events per device and day, alternating, from a fixed per-device IP."""
    rng = _rng(ds.seed, 200, chunk_no)
    per_day = ds.preset.events_per_day
    n, days = len(devices), len(buckets)
    shape = (n, days, per_day)
    interval = DAY_MS // per_day
    day_ms = np.array([_day_ms(d) for d in buckets], dtype=np.int64)
    dates = np.array([cql_date(d) for d in buckets], dtype=np.int64)
    ts = (day_ms[None, :, None] + (np.arange(per_day, dtype=np.int64) * interval)[None, None, :]
          + rng.integers(0, interval // 2, shape))
    ttl = ts // 1000 + CONNECTION_EVENT_RETENTION_DAYS * DAY_S - now_s
    octets = rng.integers(1, 255, (n, 3))
    ips = np.array([f"10.{a}.{b}.{c}" for a, b, c in octets.tolist()], dtype=object)
    event = np.array(CONNECTION_EVENTS, dtype=object)[np.arange(per_day) % len(CONNECTION_EVENTS)]
    keep = (ttl > 0).ravel()
    dev_col = np.broadcast_to(devices[:, None, None], shape).ravel()[keep]
    day_col = np.broadcast_to(dates[None, :, None], shape).ravel()[keep]
    ts_col = ts.ravel()[keep]
    rows = Rows(
        {"device_id": dev_col, "day": day_col, "ts": ts_col,
         "event": np.broadcast_to(event[None, None, :], shape).ravel()[keep],
         "remote_ip": np.broadcast_to(ips[:, None, None], shape).ravel()[keep],
         "ttl": ttl.ravel()[keep], "writetime": ts_col * 1000},
        _starts(dev_col, day_col),
    )
    return rows, int(keep.size - keep.sum())


# ------------------------------------------------------------------------------------ predictions


def expected_counts(preset: Preset, seed: int) -> dict[int, dict[str, int]]:
    """Rows per tenant and table (PostgreSQL and Cassandra), exactly as ``generate`` writes them.

    Shared tables are under tenant 0. Cassandra counts assume nothing had expired at generation time,
    which holds for every preset (see ``valid_until``).
    """
    ds = build_dataset(preset, seed)
    out: dict[int, dict[str, int]] = {t: {} for t in range(TENANT_COUNT + 1)}
    for name, table in ds.tables.items():
        counts = np.bincount(table.tenant, minlength=TENANT_COUNT + 1)
        for t in range(TENANT_COUNT + 1):
            if t == 0 and name not in SHARED_TABLES:
                continue
            if t > 0 and name in SHARED_TABLES:
                continue
            out[t][name] = int(counts[t])
    tel = ds.telemetry
    props = np.bincount(tel.prop_tenant, minlength=TENANT_COUNT + 1)
    devs = np.bincount(tel.device_tenant, minlength=TENANT_COUNT + 1)
    for t in range(1, TENANT_COUNT + 1):
        out[t]["datapoints"] = int(props[t]) * preset.days * preset.points_per_day
        out[t]["latest_values"] = int(props[t])
        out[t]["connection_events"] = int(devs[t]) * preset.days * preset.events_per_day
    return out


def table_totals(counts: dict[int, dict[str, int]]) -> dict[str, int]:
    """Per-table totals of a per-tenant count mapping, in load order."""
    totals: dict[str, int] = {}
    for name in (*PG_TABLES, *CASSANDRA_TABLES):
        totals[name] = sum(per.get(name, 0) for per in counts.values())
    return totals


def tenant_sizes(preset: Preset, seed: int) -> dict[int, int]:
    """Total rows (PostgreSQL and Cassandra) of each tenant, predicted without a database."""
    return {t: sum(per.values()) for t, per in expected_counts(preset, seed).items() if t > 0}
