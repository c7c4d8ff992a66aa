"""Extra links and their pages (``evidence``): which tasks get which link, the URLs the worker
stores, reports confined to the reports folder, pages that escape what they show. The plugin's
routes on a real api-server are exercised by ``tests/e2e/test_operator_alerts.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from helpers import parse_dag

from tenant_migration import evidence


@pytest.mark.parametrize(("task", "names", "prefix"), [
    ("preflight", ["preflight"], None),
    ("ready.gate_post_copy", ["post_copy"], None),
    ("set.gate_catch_up", ["catch_up"], None),
    ("gate_final", ["final"], None),
    ("back.gate_copy_back", ["copy_back"], None),
    ("go.flip_dns", [], "dns_shift_"),
    ("verify_shared_unchanged", ["shared_unchanged"], None),
])
def test_a_gate_task_finds_its_gates(task: str, names: list[str], prefix: str | None) -> None:
    assert evidence.gate_names(task) == (names, prefix)
    assert evidence.is_gate_task(task)


def test_every_gate_task_and_copy_batch_of_every_dag_has_its_link() -> None:
    for dag_id in ("tenant_migration", "tenant_rehearsal", "tenant_rollback"):
        dag = parse_dag(dag_id)
        for t in dag.tasks:
            names = [link.name for link in getattr(t, "operator_extra_links", ())]
            short = evidence.short(t.task_id)
            if short.startswith("gate_") or short in ("preflight", "flip_dns", "verify_shared_unchanged"):
                assert "Gate evidence" in names, (dag_id, t.task_id)
            elif short in evidence.BATCH_TASKS:
                assert names == ["Chunks of this batch"], (dag_id, t.task_id)
                cls = getattr(t, "operator_class", None)  # what a mapped instance runs as carries it too
                if isinstance(cls, type):
                    assert [link.name for link in cls.operator_extra_links] == names, (dag_id, t.task_id)
                    assert cls.__name__ == cls.__mro__[1].__name__, "the class keeps its operator's name"
            else:
                assert not names, (dag_id, t.task_id, names)


def test_the_urls_the_worker_stores(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:18080/")
    key = SimpleNamespace(dag_id="tenant_migration", run_id="manual__2026-12-07T10:00:00+00:00",
                          task_id="ready.copy_cassandra_batch", map_index=3)
    op = SimpleNamespace(op_kwargs={"chunk_ids": ["cql:datapoints:0040", "cql:datapoints:0041"]})
    url = urlparse(evidence.BatchChunksLink().get_link(op, ti_key=key))
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:18080", "/tenant-migration/batch")
    assert parse_qs(url.query) == {"dag_id": ["tenant_migration"], "run_id": ["manual__2026-12-07T10:00:00+00:00"],
                                   "task_id": ["ready.copy_cassandra_batch"], "first": ["cql:datapoints:0040"]}
    assert "first=" not in evidence.BatchChunksLink().get_link(SimpleNamespace(), ti_key=key)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    assert evidence.GateEvidenceLink().get_link(None, ti_key=key).startswith("/tenant-migration/gate?dag_id=")


def test_only_files_under_the_reports_folder_get_a_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    page = tmp_path / "tenant_migration_manual__1" / "gx" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html/>")
    assert evidence.report_href(str(page), tmp_path, "tenant_migration") == \
        "/tenant-migration/reports/tenant_migration/tenant_migration_manual__1/gx/index.html"
    assert evidence.report_href("/etc/passwd", tmp_path, "tenant_migration") is None
    assert evidence.report_href(str(tmp_path / ".." / "x.html"), tmp_path, "tenant_migration") is None
    assert evidence.report_href(None, tmp_path, "tenant_migration") is None


def test_the_way_back_reads_the_rollback_ledger_run() -> None:
    assert evidence._ledger_run("tenant_rollback", "gate_copy_back", "r1") == "tenant_rollback/r1/back"
    assert evidence._ledger_run("tenant_rehearsal", "back.gate_copy_back", "r1") == "tenant_rehearsal/r1/back"
    assert evidence._ledger_run("tenant_rehearsal", "ready.gate_post_copy", "r1") == "tenant_rehearsal/r1"


def test_pages_escape_what_they_show(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    gate = evidence.gate_page("tenant_migration", "r<1>", "ready.gate_post_copy", [
        {"gate": "post_copy", "attempt": 2, "passed": False, "summary": "devices: <script>x</script>",
         "report_path": None, "at": now}], tmp_path)
    assert "<script>x" not in gate and "&lt;script&gt;" in gate and "failed" in gate and "not kept" in gate
    rows = [{"chunk_id": "pg:devices:0001", "table_name": "devices", "status": "failed", "rows_copied": None,
             "partitions": None, "attempts": 2, "started_at": now - timedelta(seconds=3), "finished_at": now,
             "last_error": "checksum mismatch <b>"}]
    page = evidence.batch_page("tenant_migration", "r1", "ready.copy_postgres_batch", "the batch", rows)
    assert "0 of 1 done" in page and "checksum mismatch &lt;b&gt;" in page and "3.00" in page
    assert "No gate result" in evidence.gate_page("d", "r", "t", [], tmp_path)
