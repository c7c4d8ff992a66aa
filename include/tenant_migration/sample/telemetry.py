"""The sample platform's Cassandra data, derived from its relational dataset (``sample.data``): day
buckets, chunks of datapoints, latest values and connection events with their write times and TTLs,
reproducible from (preset, seed, today)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from tenant_migration.sample.data import (
    CONNECTION_EVENT_RETENTION_DAYS,
    CONNECTION_EVENTS,
    DAY_MS,
    DAY_S,
    PROPERTY_BASE,
    PROPERTY_NOISE,
    PROPERTY_SWING,
    Dataset,
    Preset,
    _rng,
    plan_tenants,
)

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
