"""The PostgreSQL engine, one component per module (ghostferry's split):

* ``catalog``  what the live catalogs say; ``check_tenant_map`` (map vs catalog, drift, what the
  engine cannot migrate: ``key_problem``, ``carry_problems``) and ``load_order`` (every real FK
  among tenant-scoped tables; ``order_tables`` on FKs already read, for discovery);
* ``planner``  ``plan_postgres`` splits each table's rows of the tenant into key ranges, once per
  run, persisted in the ledger;
* ``copy``     ``copy_chunks`` (planned chunks by id) and ``copy_pending_chunks`` (every chunk not done):
  server-to-server COPY through two psql processes, delete + load + verify + mark done in one
  target transaction; ``verify_chunks`` re-checks every chunk after the fact.

Nothing is imported here on purpose: importing the package must stay cheap for DAG parsing.
"""
