#!/usr/bin/env bash
# Install everything ispstream needs on a fresh Debian 12 machine: Debian packages
# (PostgreSQL, FreeRADIUS and its client tools) and a project virtualenv in .venv.
# Idempotent: a second run only checks. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql postgresql-contrib freeradius freeradius-utils freeradius-rest snmpd snmp snmptrapd prometheus-snmp-exporter
              gcc python3-dev)  # the compiler and headers for the compiled hot modules (setup.py)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian freeradius package starts a system daemon on 1812/1813; ispstream runs its
# own instances on private ports, so keep the system one out of the way.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet freeradius 2>/dev/null; then
  $SUDO systemctl stop freeradius || true
fi
# Only the packaged daemon (its pid file): tests and benchmarks run their own instances.
if [ -f /run/freeradius/freeradius.pid ]; then
  kill "$(cat /run/freeradius/freeradius.pid)" 2>/dev/null || true
  rm -f /run/freeradius/freeradius.pid
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PYTHON" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.ispstream-installed
# Reinstall when the dependencies changed, or when a compiled hot module no longer
# matches its source (setup.py compiles them again; until then they run as Python).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || ! .venv/bin/ispstream compiled --check >/dev/null 2>&1; then
  echo "bootstrap: installing Python dependencies" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -vE '^(WARNING|\s)' || true
  .venv/bin/python -c 'import ispstream, bytewax, confluent_kafka, pyrad, psycopg, fastapi'
  touch "$stamp"
fi
