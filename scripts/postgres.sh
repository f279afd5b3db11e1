#!/usr/bin/env bash
# Make sure a local PostgreSQL is running with the ispstream role and database, unless
# ISPSTREAM_DATABASE_URL points somewhere else. Prints nothing on success.
set -euo pipefail
if [ -n "${ISPSTREAM_DATABASE_URL:-}" ] && [[ "$ISPSTREAM_DATABASE_URL" != *"@127.0.0.1:5432/"* ]] && [[ "$ISPSTREAM_DATABASE_URL" != *"@localhost:5432/"* ]]; then
  exit 0   # an external database is configured: nothing to start
fi
version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
[ -n "$version" ] || { echo "postgres.sh: PostgreSQL is not installed (run scripts/bootstrap.sh)" >&2; exit 1; }
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 30); do
  su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.5
done
su postgres -c "psql -v ON_ERROR_STOP=1 -Atq" <<'SQL' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ispstream') THEN
    CREATE ROLE ispstream LOGIN PASSWORD 'ispstream' CREATEDB CREATEROLE;
  END IF;
END $$;
SELECT 'CREATE DATABASE ispstream OWNER ispstream'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ispstream') \gexec
SQL
