"""FreeRADIUS 3.2 as a benchmark peer: a private instance per kind, on a private port.

Kinds (templates in ``bench/freeradius/``):

- ``sql``: accounting with the stock ``sql`` module and the package's PostgreSQL
  ``radacct`` queries, against a fresh database created from the package's schema.sql;
- ``detail``: accounting written only to the ``detail`` file;
- ``null``: answers without recording anything (the load generator's ceiling).

The package's own files are used where possible: ``queries.conf`` and ``schema.sql``
from its ``mods-config/sql/main/postgresql/`` and the ``acct_unique`` policy from its
``policy.d/accounting``, read from the installed package at run time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from bench import radload
from bench._common import ADMIN_DSN, dsn_for, wait_until

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "freeradius"
RADDB = Path("/etc/freeradius/3.0")          # the Debian package's configuration
PG_MODCONF = RADDB / "mods-config/sql/main/postgresql"
LIBDIR = Path("/usr/lib/freeradius")

ACCOUNTING = {"sql": "\t\tsql", "detail": "\t\tdetail", "null": "\t\tok"}


def check_installed(kinds: list[str]) -> None:
    """Fail early, naming the package, when a needed piece is missing. The one piece
    scripts/bootstrap.sh does not install, FreeRADIUS's PostgreSQL driver, is installed
    here when missing."""
    if not kinds:
        return
    if not shutil.which("freeradius"):
        raise SystemExit("freeradius is not installed (Debian package freeradius)")
    if os.geteuid() != 0:
        raise SystemExit("the FreeRADIUS peers are run as root (freeradius -f -d DIR)")
    if "sql" in kinds:
        if not (LIBDIR / "rlm_sql_postgresql.so").exists():
            _install_debian_package("freeradius-postgresql")
        if not (LIBDIR / "rlm_sql_postgresql.so").exists():
            raise SystemExit(
                "FreeRADIUS's PostgreSQL driver is missing: install the Debian package "
                "freeradius-postgresql (apt-get install freeradius-postgresql)")
        for f in ("queries.conf", "schema.sql"):
            if not (PG_MODCONF / f).exists():
                raise SystemExit(f"{PG_MODCONF / f} is missing (Debian package freeradius-config)")


def _install_debian_package(name: str) -> None:
    """Install one Debian package the benchmark needs (it runs as root anyway)."""
    if not shutil.which("apt-get"):
        return
    log.warning("installing the Debian package %s (needed by the freeradius-sql target)",
                name)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    rv = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", name],
                        env=env, capture_output=True, text=True)
    if rv.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", name],
                       env=env, capture_output=True, text=True)


class FreeRadiusPeer:
    """One private FreeRADIUS process: ``start()``, ``reset()`` before each run, ``stop()``."""

    def __init__(self, kind: str, workdir: Path, port: int, secret: str,
                 admin_dsn: str = ADMIN_DSN) -> None:
        if kind not in ACCOUNTING:
            raise ValueError(f"unknown FreeRADIUS peer kind {kind!r}")
        self.kind = kind
        self.dir = workdir
        self.port = port
        self.secret = secret
        self.admin_dsn = admin_dsn
        self.db_name: str | None = None
        self.db_dsn: str | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    # --- configuration --------------------------------------------------------------

    def _render(self, text: str, values: dict[str, str]) -> str:
        for k, v in values.items():
            text = text.replace(f"@{k}@", v)
        return text

    def _create_database(self) -> None:
        self.db_name = f"bench_fr_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_dsn = dsn_for(self.db_name, self.admin_dsn)
        with psycopg.connect(self.db_dsn, autocommit=True) as conn:
            conn.execute((PG_MODCONF / "schema.sql").read_text())

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("log", "run", "radacct"):
            (self.dir / sub).mkdir(exist_ok=True)
        values = {
            "DIR": str(self.dir),
            "PORT": str(self.port),
            "SECRET": self.secret,
            "POLICY_ACCOUNTING": str(RADDB / "policy.d/accounting"),
            "ACCOUNTING": ACCOUNTING[self.kind],
        }
        module = (TEMPLATES / f"{self.kind}.conf.in").read_text()
        if self.kind == "sql":
            if self.db_name is None:
                self._create_database()
            url = urlsplit(self.db_dsn)
            module = self._render(module, {
                "DB_HOST": url.hostname or "127.0.0.1", "DB_PORT": str(url.port or 5432),
                "DB_USER": url.username or "", "DB_PASSWORD": url.password or "",
                "DB_NAME": self.db_name,
            })
            qdir = self.dir / "mods-config/sql/main/postgresql"
            qdir.mkdir(parents=True, exist_ok=True)
            shutil.copy(PG_MODCONF / "queries.conf", qdir / "queries.conf")
        values["MODULES"] = module
        conf = self._render((TEMPLATES / "radiusd.conf.in").read_text(), values)
        (self.dir / "radiusd.conf").write_text(conf)

    # --- process ----------------------------------------------------------------------

    def start(self) -> None:
        self.write_config()
        check = subprocess.run(["freeradius", "-C", "-d", str(self.dir)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"FreeRADIUS ({self.kind}) config check failed:\n"
                               f"{check.stdout[-3000:]}{check.stderr[-3000:]}")
        self._log = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(["freeradius", "-f", "-d", str(self.dir)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._alive_or_raise() and radload.probe(
            "127.0.0.1", self.port, self.secret, timeout=1), 30,
            f"FreeRADIUS ({self.kind}) to answer on port {self.port}", every=0.3)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """Start the process again (same port, database and configuration)."""
        self._stop_process()
        self.start()

    def _alive_or_raise(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"FreeRADIUS ({self.kind}) exited:\n{self.log_tail()}")
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 4000) -> str:
        out = []
        for p in (self.dir / "stdout.log", self.dir / "log/radius.log"):
            if p.exists():
                out.append(p.read_text(errors="replace")[-n:])
        return "\n".join(out)

    def reset(self) -> None:
        """Forget the previous run: the stock queries would not answer an Interim that
        arrives after its session's Stop, so re-sending the same load needs an empty
        ``radacct``; the detail file is removed so its record count is per run."""
        self._alive_or_raise()
        if self.kind == "sql":
            with psycopg.connect(self.db_dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE radacct")
        shutil.rmtree(self.dir / "radacct", ignore_errors=True)
        (self.dir / "radacct").mkdir()

    def stored(self) -> dict:
        """What this peer recorded in the last run (a sanity check, not timed)."""
        if self.kind == "sql":
            with psycopg.connect(self.db_dsn) as conn:
                rows, stopped = conn.execute(
                    "SELECT count(*), count(acctstoptime) FROM radacct").fetchone()
            return {"radacct_rows": rows, "radacct_stopped": stopped}
        if self.kind == "detail":
            records = 0
            for f in (self.dir / "radacct").rglob("detail-*"):
                with open(f, errors="replace") as fh:
                    records += sum(1 for line in fh if line.strip() and not line[0].isspace())
            return {"detail_records": records}
        return {}

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._stop_process()
        if self.db_name:
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except psycopg.Error as exc:  # noqa: PERF203 - cleanup is best effort
                log.warning("could not drop %s: %s", self.db_name, exc)
            self.db_name = None
