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

from dataclasses import dataclass
from datetime import UTC, datetime
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


