"""The "Tenant migrations" page's pure parts (``live``): a run's phase from its newest step, and a
page that loads nothing from elsewhere. Its data against the real ledger, its auth and what a
browser shows are ``tests/e2e/test_live_page.py``."""

from __future__ import annotations

import re

import pytest

from tenant_migration import live


@pytest.mark.parametrize(("step", "phase"), [
    ("preflight", "ready"), ("copy_cassandra", "ready"), ("gate_post_copy", "ready"),
    ("catch_up_postgres", "set"), ("gate_catch_up_catch_up", "set"), ("warm_up", "set"),
    ("registrations_suspended", "go"), ("final_catch_up", "go"), ("flip_dns", "go"), ("drain_postgres", "go"),
    ("gate_final", "finish"), ("check_rollback", "rollback"), ("copy_back_cassandra", "rollback"),
    (None, "ready"), ("something_new", "other"),
])
def test_a_runs_phase_comes_from_its_newest_step(step: str | None, phase: str) -> None:
    assert live.phase_of_step(step) == phase


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = live.page()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # inline script and style only
    assert "http://" not in page and "https://" not in page
    assert 'credentials: "same-origin"' in page  # the session cookie, never a token in the page
