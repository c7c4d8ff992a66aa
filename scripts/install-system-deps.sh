#!/usr/bin/env bash
# Installs the machine packages the local stack needs, only when something is missing:
# PostgreSQL 15 server (+ contrib for pg_prewarm), Java 17, Maven, util-linux (setpriv), a C
# compiler (the chunk copier's checksum tool, include/tenant_migration/postgres/rowsum.c), Chromium
# (the browser test of the UI page drives it headless through playwright), Redis (the Celery
# broker of `make stack-up WORKERS=N`).
set -euo pipefail

missing=()
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || missing+=(postgresql-15)
[[ -f /usr/lib/postgresql/15/lib/pg_prewarm.so ]] || missing+=(postgresql-contrib)
[[ -x /usr/lib/postgresql/15/bin/psql || -x /usr/bin/psql ]] || missing+=(postgresql-client-15)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian package starts a cluster of its own on 5432; the project runs its own servers.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster 15 main stop || true
fi
