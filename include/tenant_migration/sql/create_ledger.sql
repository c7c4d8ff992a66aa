-- The migration ledger: progress of every run lives here, on the target, not in XCom.
-- Idempotent; applied by the first task of every run (ledger.ensure_schema).
CREATE SCHEMA IF NOT EXISTS tm_control;

CREATE TABLE IF NOT EXISTS tm_control.runs (
    run_id              text PRIMARY KEY,
    tenant_id           bigint NOT NULL,
    status              text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'aborted')),
    context_fingerprint text NOT NULL,
    spec                jsonb NOT NULL,
    detach_lsn          pg_lsn,
    detach_commit_time  timestamptz,
    started_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at         timestamptz
);
-- At most one live run per tenant: a second trigger for the same tenant fails on this index.
CREATE UNIQUE INDEX IF NOT EXISTS runs_one_live_per_tenant ON tm_control.runs (tenant_id)
    WHERE status = 'running';

CREATE TABLE IF NOT EXISTS tm_control.chunks (
    run_id           text NOT NULL REFERENCES tm_control.runs ON DELETE CASCADE,
    chunk_id         text NOT NULL,
    engine           text NOT NULL CHECK (engine IN ('postgres', 'cassandra')),
    table_name       text NOT NULL,
    bounds           jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'failed')),
    rows_copied      bigint,
    partitions       bigint,
    bytes_copied     bigint,
    source_checksum  text,
    target_checksum  text,
    attempts         integer NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    last_error       text,
    PRIMARY KEY (run_id, chunk_id)
);

CREATE TABLE IF NOT EXISTS tm_control.gates (
    run_id       text NOT NULL REFERENCES tm_control.runs ON DELETE CASCADE,
    gate         text NOT NULL,
    attempt      integer NOT NULL,
    passed       boolean NOT NULL,
    summary      text NOT NULL,
    evidence     jsonb NOT NULL,
    report_path  text,
    evaluated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, gate, attempt)
);

CREATE TABLE IF NOT EXISTS tm_control.events (
    event_id  bigserial PRIMARY KEY,
    run_id    text NOT NULL REFERENCES tm_control.runs ON DELETE CASCADE,
    step      text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('started', 'finished', 'failed', 'info')),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS events_run_idx ON tm_control.events (run_id, event_id);

-- Columns added after the first release: ledgers created earlier gain them in place.
ALTER TABLE tm_control.chunks ADD COLUMN IF NOT EXISTS partitions bigint;
-- The replica snapshot chunks copy from now (detach_lsn stays the first one: change capture starts there).
ALTER TABLE tm_control.runs ADD COLUMN IF NOT EXISTS snapshot_lsn pg_lsn;

-- Closes a PostgreSQL chunk inside the transaction that deleted and re-loaded its rows: compares the
-- replica's count and checksum with the target's (computed by the caller in the same statement),
-- raises on any difference (the whole chunk transaction rolls back), else marks the chunk done.
-- Being the last statement before COMMIT, it is what makes "rows and done mark in one transaction"
-- true even when the bytes travel through psql and never through Python.
CREATE OR REPLACE FUNCTION tm_control.complete_chunk(
    p_run_id text, p_chunk_id text, p_table text,
    p_source_rows bigint, p_source_checksum text,
    p_target_rows bigint, p_target_checksum text,
    p_bytes bigint
) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF p_source_rows IS DISTINCT FROM p_target_rows OR p_source_checksum IS DISTINCT FROM p_target_checksum THEN
        RAISE EXCEPTION 'checksum mismatch in % chunk %: source % rows checksum %, target % rows checksum %',
            p_table, p_chunk_id, p_source_rows, p_source_checksum, p_target_rows, p_target_checksum
            USING ERRCODE = 'TM001';
    END IF;
    UPDATE tm_control.chunks
       SET status = 'done', rows_copied = p_target_rows, bytes_copied = p_bytes,
           source_checksum = p_source_checksum, target_checksum = p_target_checksum,
           finished_at = clock_timestamp(), last_error = NULL
     WHERE run_id = p_run_id AND chunk_id = p_chunk_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % has no planned chunk %', p_run_id, p_chunk_id USING ERRCODE = 'TM002';
    END IF;
    RETURN p_target_rows;
END $$;
