-- meterhub's grants to the migration's least-privilege roles (created by the stack's first
-- platform or here). Run as a superuser after schema.sql, on the primary and on the target.
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
ALTER ROLE migration_reader REPLICATION;
GRANT USAGE ON SCHEMA hub TO migration_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA hub TO migration_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA hub TO migration_reader;

GRANT USAGE ON SCHEMA hub TO migration_writer;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA hub TO migration_writer;
GRANT SELECT, UPDATE, USAGE ON ALL SEQUENCES IN SCHEMA hub TO migration_writer;
GRANT SET ON PARAMETER session_replication_role TO migration_writer;

-- Registrations are switched by meterhub's admin API (HTTP), not by SQL: no grant to the operator
-- here. Promote mode: the run promotes a standby of its own.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO migration_operator;

GRANT USAGE ON SCHEMA hub TO platform_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA hub TO platform_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA hub TO platform_app;
