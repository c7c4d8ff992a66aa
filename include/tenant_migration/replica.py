"""Detaching the read replica: the migration copies from a frozen, consistent replica, never from
the loaded primary.

Local mode pauses WAL replay on the hot standby (``pg_wal_replay_pause``) and records where it
stopped: the replay LSN and the last replayed commit time are the detach point (the watermark that
change capture and catch-up start from). Reattach resumes replay. Both are idempotent: pausing a
paused standby and resuming a streaming one change nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import psycopg


class ReplicaError(RuntimeError):
    """The replica cannot be detached or reattached."""


@dataclass(frozen=True)
class DetachPoint:
    lsn: str
    commit_time: datetime | None
    already_paused: bool

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "lsn": self.lsn,
            "commit_time": self.commit_time.isoformat() if self.commit_time else None,
            "already_paused": self.already_paused,
        }


def pause_state(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()").fetchone()
    assert row is not None
    if not row[0]:
        raise ReplicaError("the replica connection does not reach a standby (pg_is_in_recovery() is false)")
    return str(row[1])


def detach(conn: psycopg.Connection, timeout: float = 60.0) -> DetachPoint:
    """Pause WAL replay and wait until it is really paused; return the detach point."""
    state = pause_state(conn)
    already = state == "paused"
    if state == "not paused":
        conn.execute("SELECT pg_wal_replay_pause()")
    deadline = time.monotonic() + timeout
    while pause_state(conn) != "paused":
        if time.monotonic() > deadline:
            raise ReplicaError(f"replay did not pause within {timeout:.0f}s")
        time.sleep(0.1)
    row = conn.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").fetchone()
    assert row is not None
    return DetachPoint(lsn=row[0], commit_time=row[1], already_paused=already)


def reattach(conn: psycopg.Connection) -> str:
    """Resume WAL replay; return the pause state before."""
    state = pause_state(conn)
    if state != "not paused":
        conn.execute("SELECT pg_wal_replay_resume()")
    return state
