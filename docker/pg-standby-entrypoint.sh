#!/bin/bash
# A streaming hot standby of pg-primary, made by pg_basebackup on first start (compose only).
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h pg-primary -U "$POSTGRES_USER"; do sleep 1; done
  gosu postgres pg_basebackup -h pg-primary -U "$POSTGRES_USER" -D "$PGDATA" -R -X stream -S standby_slot
fi
exec gosu postgres postgres -c hot_standby=on -c hot_standby_feedback=on
