"""The Airflow connection ids the migration reads: one per role and server, so that a task gets
exactly the rights its connection's role has (docs/local-stack.md, its connections table). A deployment defines them
(``AIRFLOW_CONN_*``, a secrets backend, the UI); the local stack writes them for its own servers."""

from __future__ import annotations

CONN_SOURCE_PRIMARY = "tm_source_primary"  # the platform's app role on the live primary (the fleet)
CONN_SOURCE_OPERATOR = "tm_source_operator"  # migration_operator on the primary (registrations)
CONN_SOURCE_CDC = "tm_source_cdc"  # migration_reader on the primary (logical decoding slot, sequences)
CONN_SOURCE_REPLICA = "tm_source_replica"  # migration_reader on the standby (read-only copy source)
CONN_REPLICA_CONTROL = "tm_replica_control"  # migration_operator on the standby (pause/resume replay)
CONN_TARGET = "tm_target"  # migration_writer on the target
CONN_CASSANDRA_SOURCE = "tm_cassandra_source"
CONN_CASSANDRA_TARGET = "tm_cassandra_target"
CONN_AWS = "tm_aws"
CONN_AIRFLOW_API = "tm_airflow_api"  # Airflow's own REST API, as a user that may edit DAG runs (run notes)
CONN_ALERTS = "tm_alerts"  # the on-call webhook (http: host, port, schema; password = signing secret; extra endpoint)
