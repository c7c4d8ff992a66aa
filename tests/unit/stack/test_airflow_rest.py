"""Stopping a standalone leaves nothing of its process group behind."""

from __future__ import annotations

import signal
import subprocess
import time

from tenant_migration.stack.airflow_rest import group_members, stop


def _group_alive(pgid: int) -> bool:
    deadline = time.monotonic() + 5  # a SIGKILLed process takes a moment to die
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(group_members(pgid))


def test_stop_kills_what_outlives_the_top_process() -> None:
    # The top process exits at once; its child ignores SIGTERM, like a scheduler hung in shutdown.
    proc = subprocess.Popen(["sh", "-c", "sh -c 'trap \"\" TERM; sleep 300' & sleep 0.2; exit 0"],
                            start_new_session=True)
    proc.wait(timeout=10)
    assert group_members(proc.pid)
    began = time.monotonic()
    stop(proc, grace=1)
    assert not _group_alive(proc.pid)
    assert time.monotonic() - began < 15


def test_stop_terminates_a_running_group() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
    time.sleep(0.2)
    stop(proc, grace=5)
    assert proc.returncode == -signal.SIGTERM
    assert not _group_alive(proc.pid)
