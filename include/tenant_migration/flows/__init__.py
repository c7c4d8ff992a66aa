"""The migration's steps, one module per phase: ``ready``, ``set``, ``go``, ``finish`` (arrows run
that way, each on ``common``). One function per DAG task, callable without a scheduler: every step
is keyed by (run id, step) and is safe to retry or clear by hand; it reads the ledger and does only
the work not yet done, and returns a small JSON-able summary for XCom (no credentials, no row data).
"""
