"""Waits that free their worker. A task that must wait for a moment (the old DNS TTL to pass) hands
the wait to Airflow's triggerer and is resumed when the moment comes: while it waits it is
``deferred`` and holds no worker slot and no pool slot (pools count deferred tasks only with
``include_deferred``). The moment comes from the ledger, so a retried, cleared or resumed wait keeps
the deadline its first try set. Under ``airflow dags test`` the trigger runs in line.

A ``@task`` cannot be resumed as it is (Airflow calls the resume method with the trigger's
``event``, which ``execute`` does not take; ending from the trigger instead fails the same way
under ``dags test``, measured): ``resumable`` gives the task a method that runs it again, and the
step, finding its deadline passed, returns at once."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from tenant_migration.lazy import same_named_subclass

log = logging.getLogger(__name__)

MIN_DEFER_S = 5.0  # a shorter wait sleeps: handing it to the triggerer and back costs about as much


def until(out: dict[str, Any], key: str = "wait_until") -> dict[str, Any]:
    """Wait until ``out[key]`` (an ISO moment): sleep when it is near, else defer the task, which
    then ends (successfully) from the trigger. ``out`` back when there is nothing left to wait."""
    moment_text = out.get(key)
    if not moment_text:
        return out
    moment = datetime.fromisoformat(moment_text)
    left = (moment - datetime.now(UTC)).total_seconds()
    if left <= 0:
        return out
    if left < MIN_DEFER_S:
        time.sleep(left)
        return out
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk.exceptions import TaskDeferred

    log.info("waiting %.0f s, until %s, in the triggerer: this task holds no worker or pool slot meanwhile",
             left, moment.isoformat())
    raise TaskDeferred(trigger=DateTimeTrigger(moment=moment), method_name=RESUME)


RESUME = "resume_after_wait"


def _resume(self: Any, context: Any, event: Any = None) -> Any:
    """Run the task again once its moment has come (what it waited for is in the ledger)."""
    return self.execute(context)


def resumable(output: Any) -> Any:
    """Let the (unmapped) task behind ``output`` (what calling a ``@task`` returns) be resumed
    after ``until`` deferred it: its operator gets a same-named subclass with the resume method.
    Returns ``output``."""
    op = output.operator
    base = type(op)
    if not hasattr(base, RESUME):
        op.__class__ = same_named_subclass(base, **{RESUME: _resume})
    return output
