-- Sample shared IoT platform: the schema the product migrates in demos and tests.
-- Applied identically to the shared source (primary) and to the empty target ("VPC").
-- Tenant reach (see tenant_map.yaml):
--   tenants, tenant_settings, users, devices, api_keys     own tenant_id column
--   device_registrations, properties, device_shares        -> devices -> tenants   (1 hop)
--   dashboards                                             -> users -> tenants     (1 hop)
--   rules                                                  -> properties -> devices -> tenants (2 hops)
--   rule_actions                                           -> rules -> properties -> devices -> tenants (3 hops)
--   device_models, firmware_releases                       shared: belong to no tenant

CREATE SCHEMA IF NOT EXISTS platform;
SET search_path = platform;

CREATE OR REPLACE FUNCTION platform.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

-- The platform itself refuses registrations while a tenant's registrations are suspended, until the
-- suspension expires: the expiry is the dead-man switch that brings registrations back even if the
-- orchestrator dies mid-migration.
CREATE OR REPLACE FUNCTION platform.check_registrations_open() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_tenant bigint;
    v_until  timestamptz;
BEGIN
    IF TG_TABLE_NAME = 'device_registrations' THEN
        SELECT d.tenant_id INTO v_tenant FROM platform.devices d WHERE d.device_id = NEW.device_id;
    ELSE
        v_tenant := NEW.tenant_id;
    END IF;
    SELECT s.registrations_suspended_until INTO v_until
      FROM platform.tenant_settings s
     WHERE s.tenant_id = v_tenant AND NOT s.registrations_enabled;
    IF FOUND AND (v_until IS NULL OR v_until > clock_timestamp()) THEN
        RAISE EXCEPTION 'registrations are suspended for tenant % until %', v_tenant, v_until
            USING ERRCODE = 'P0001', HINT = 'retry after the suspension window';
    END IF;
    RETURN NEW;
END $$;

-- Shared reference data ------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS device_models (
    model_id    integer PRIMARY KEY,
    vendor      text NOT NULL,
    name        text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS firmware_releases (
    release_id  integer PRIMARY KEY,
    model_id    integer NOT NULL REFERENCES device_models,
    version     text NOT NULL,
    released_at timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Tenant-scoped -------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   bigint PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    plan        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS tenant_settings (
    tenant_id                     bigint PRIMARY KEY REFERENCES tenants,
    registrations_enabled         boolean NOT NULL DEFAULT true,
    registrations_suspended_until timestamptz,
    suspension_reason             text,
    data_retention_days           integer NOT NULL DEFAULT 90,
    updated_at                    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS users (
    user_id      uuid PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants,
    email        text NOT NULL UNIQUE,
    display_name text NOT NULL,
    role         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS users_tenant_idx ON users (tenant_id);

CREATE TABLE IF NOT EXISTS api_keys (
    api_key_id  uuid PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants,
    label       text NOT NULL,
    key_hash    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE IF NOT EXISTS devices (
    device_id     bigint PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants,
    serial        text NOT NULL UNIQUE,
    model_id      integer NOT NULL REFERENCES device_models,
    firmware_id   integer REFERENCES firmware_releases,
    name          text NOT NULL,
    mode          text NOT NULL DEFAULT 'background',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS devices_tenant_idx ON devices (tenant_id);

CREATE TABLE IF NOT EXISTS device_registrations (
    registration_id uuid PRIMARY KEY,
    device_id       bigint NOT NULL REFERENCES devices,
    user_id         uuid NOT NULL REFERENCES users,
    status          text NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS device_registrations_device_idx ON device_registrations (device_id);

CREATE TABLE IF NOT EXISTS device_shares (
    user_id     uuid NOT NULL REFERENCES users,
    device_id   bigint NOT NULL REFERENCES devices,
    permission  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX IF NOT EXISTS device_shares_device_idx ON device_shares (device_id);

CREATE TABLE IF NOT EXISTS properties (
    property_id bigint PRIMARY KEY,
    device_id   bigint NOT NULL REFERENCES devices,
    name        text NOT NULL,
    data_type   text NOT NULL,
    unit        text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS properties_device_idx ON properties (device_id);

CREATE TABLE IF NOT EXISTS rules (
    rule_id     bigint PRIMARY KEY,
    property_id bigint NOT NULL REFERENCES properties,
    expression  text NOT NULL,
    threshold   double precision,
    enabled     boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rules_property_idx ON rules (property_id);

CREATE TABLE IF NOT EXISTS rule_actions (
    rule_id     bigint NOT NULL REFERENCES rules,
    action_no   smallint NOT NULL,
    kind        text NOT NULL,
    target      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, action_no)
);

CREATE TABLE IF NOT EXISTS dashboards (
    dashboard_id bigint PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users,
    title        text NOT NULL,
    layout       jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dashboards_user_idx ON dashboards (user_id);

-- Triggers (idempotent: dropped and recreated) ------------------------------------------------
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['device_models', 'firmware_releases', 'tenants', 'tenant_settings',
                             'users', 'api_keys', 'devices', 'device_registrations', 'device_shares',
                             'properties', 'rules', 'rule_actions', 'dashboards']
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS set_updated_at ON platform.%I', t);
        EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON platform.%I '
                       'FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at()', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['users', 'devices', 'device_registrations']
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS check_registrations_open ON platform.%I', t);
        EXECUTE format('CREATE TRIGGER check_registrations_open BEFORE INSERT ON platform.%I '
                       'FOR EACH ROW EXECUTE FUNCTION platform.check_registrations_open()', t);
    END LOOP;
END $$;
