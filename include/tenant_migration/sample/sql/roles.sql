-- Least-privilege roles of the sample platform. Run as a superuser, once per server (roles created
-- on the primary reach the standby through physical replication), after schema.sql: the grants
-- name its tables. Idempotent, and runnable both by psql (psql -f roles.sql) and in one psycopg
-- execute. No password is written here (the repository must hold none): set them afterwards with
-- tenant_migration.sample.generate.apply_roles(dsn, {role: password}) or psql's \password.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['migration_reader', 'migration_writer', 'migration_operator', 'platform_app']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
END $$;

-- Reads tenant rows on the detached replica, and decodes the primary's WAL for change capture.
ALTER ROLE migration_reader REPLICATION;
GRANT USAGE ON SCHEMA platform TO migration_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA platform TO migration_reader;
-- Reads where the primary's sequences are, to set the target's past them before the flip.
GRANT SELECT ON ALL SEQUENCES IN SCHEMA platform TO migration_reader;

-- Writes the tenant's rows on the target and owns the control schema (ledger) there. Applying
-- rows with session_replication_role = replica skips the platform's triggers (updated_at is kept
-- as on the source, registration checks do not refuse copied rows).
GRANT USAGE ON SCHEMA platform TO migration_writer;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA platform TO migration_writer;
-- Sets the tenant's sequences past the source's (setval) before the flip.
GRANT SELECT, UPDATE, USAGE ON ALL SEQUENCES IN SCHEMA platform TO migration_writer;
GRANT SET ON PARAMETER session_replication_role TO migration_writer;
GRANT CREATE ON DATABASE platform TO migration_writer;

-- Suspends and resumes a tenant's registrations: nothing else.
GRANT USAGE ON SCHEMA platform TO migration_operator;
GRANT SELECT, UPDATE (registrations_enabled, registrations_suspended_until, suspension_reason)
    ON platform.tenant_settings TO migration_operator;

-- The platform's own application (and the device fleet simulator).
GRANT USAGE ON SCHEMA platform TO platform_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA platform TO platform_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA platform TO platform_app;

-- Detaches and reattaches the replica: pause and resume WAL replay on the standby (granted on the
-- primary; the grant reaches the standby through replication). Nothing else.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_pause() TO migration_operator;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_resume() TO migration_operator;

-- Promote mode of the replica detach (tenant_migration.replica.PromoteReplicaController): promote a
-- standby to an independent server. Granted on the primary, reaches the standby by replication.
-- Change capture needs no grant: the slot functions only require migration_reader's REPLICATION.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO migration_operator;
