#!/usr/bin/env bash
# Start Debian's PostgreSQL cluster on loopback and create the test role and database
# (harness/harness, database harness_test). Idempotent. Used by .ci/run and by developers:
#   bash scripts/start_test_postgres.sh && export HARNESS_TEST_PG_URL=postgresql+psycopg://harness:harness@127.0.0.1:5432/harness_test
set -euo pipefail
SUDO=""; if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
  $SUDO pg_createcluster "$ver" main
  cluster="$ver main"
fi
# shellcheck disable=SC2086
$SUDO pg_ctlcluster $cluster start 2>/dev/null || true
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 1
done
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "postgresql did not start on 127.0.0.1:5432" >&2; exit 1; }
psql_su() { $SUDO su postgres -c "psql -v ON_ERROR_STOP=1 -q -tAc \"$1\""; }
[ "$(psql_su "SELECT 1 FROM pg_roles WHERE rolname='harness'")" = "1" ] \
  || psql_su "CREATE ROLE harness LOGIN PASSWORD 'harness' CREATEDB"
[ "$(psql_su "SELECT 1 FROM pg_database WHERE datname='harness_test'")" = "1" ] \
  || psql_su "CREATE DATABASE harness_test OWNER harness"
echo "postgresql ready: postgresql+psycopg://harness:harness@127.0.0.1:5432/harness_test"
