-- meterhub: an energy-metering SaaS, the second bundled platform, deliberately unlike the sample
-- IoT platform: text, uuid and composite keys, keys <= 0, a self-referencing tree, a table three
-- hops from the tenant, a nullable tenant column (NULL: a platform template, nobody's), a ~1 MB
-- text and a bytea, jsonb, arrays, numeric, GENERATED ALWAYS identities and a sequence.
-- Idempotent; run as a superuser on the source primary (reaches the standby) and on the target.
CREATE SCHEMA IF NOT EXISTS hub;

-- Shared reference data: every org's meters point at it; copied whole, never per tenant.
CREATE TABLE IF NOT EXISTS hub.meter_models (
    model_code   text PRIMARY KEY,
    vendor       text NOT NULL,
    max_channels smallint NOT NULL,
    spec         jsonb
);

CREATE TABLE IF NOT EXISTS hub.orgs (
    org_id       bigint PRIMARY KEY,
    handle       text NOT NULL UNIQUE,
    display_name text NOT NULL,
    settings     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS hub.org_members (
    org_id     bigint NOT NULL REFERENCES hub.orgs,
    email      text NOT NULL,
    roles      text[] NOT NULL,
    invited_at timestamptz,
    PRIMARY KEY (org_id, email)
);

-- A tree of places (campus > building > floor > room); identities start below zero.
CREATE TABLE IF NOT EXISTS hub.sites (
    site_id        bigint GENERATED ALWAYS AS IDENTITY (START WITH -3 MINVALUE -3) PRIMARY KEY,
    org_id         bigint NOT NULL REFERENCES hub.orgs,
    parent_site_id bigint REFERENCES hub.sites,
    site_key       text NOT NULL UNIQUE,
    name           text NOT NULL,
    location       numeric(9, 6)[],
    area_m2        numeric(12, 2)
);
CREATE INDEX IF NOT EXISTS sites_org_idx ON hub.sites (org_id);

CREATE TABLE IF NOT EXISTS hub.meters (
    meter_uid    uuid PRIMARY KEY,
    site_id      bigint NOT NULL REFERENCES hub.sites,
    site_key     text NOT NULL,
    serial       text NOT NULL UNIQUE,
    model_code   text NOT NULL REFERENCES hub.meter_models,
    multiplier   numeric(12, 4) NOT NULL DEFAULT 1,
    installed_at timestamptz,
    config       jsonb
);
CREATE INDEX IF NOT EXISTS meters_site_idx ON hub.meters (site_id);

CREATE TABLE IF NOT EXISTS hub.meter_channels (
    meter_uid  uuid NOT NULL REFERENCES hub.meters,
    channel    smallint NOT NULL,
    channel_id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    unit       text NOT NULL,
    label      text,
    PRIMARY KEY (meter_uid, channel)
);

-- Three hops from the tenant: alarm -> channel -> meter -> site (org_id).
CREATE TABLE IF NOT EXISTS hub.channel_alarms (
    alarm_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id bigint NOT NULL REFERENCES hub.meter_channels (channel_id),
    threshold  numeric(14, 4) NOT NULL,
    severity   text NOT NULL,
    raised_at  timestamptz,
    note       text
);
CREATE INDEX IF NOT EXISTS alarms_channel_idx ON hub.channel_alarms (channel_id);

CREATE SEQUENCE IF NOT EXISTS hub.invoice_no_seq START 1000;
CREATE TABLE IF NOT EXISTS hub.invoices (
    invoice_no bigint PRIMARY KEY DEFAULT nextval('hub.invoice_no_seq'),
    org_id     bigint NOT NULL REFERENCES hub.orgs,
    amount     numeric(14, 2) NOT NULL,
    issued_at  timestamptz NOT NULL,
    lines      jsonb NOT NULL
);
ALTER SEQUENCE hub.invoice_no_seq OWNED BY hub.invoices.invoice_no;

-- org_id NULL: a platform-wide template that belongs to nobody.
CREATE TABLE IF NOT EXISTS hub.documents (
    doc_path   text PRIMARY KEY,
    org_id     bigint REFERENCES hub.orgs,
    body       text,
    attachment bytea,
    meta       jsonb,
    updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_org_idx ON hub.documents (org_id);
