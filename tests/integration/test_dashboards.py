"""Every Grafana panel's SQL runs against the migrated schema (with Grafana's macros
expanded as Grafana would), so a schema change cannot silently break a dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2] / "dashboards"
DASHBOARDS = sorted((ROOT / "json").glob("*.json"))


def _expand(sql: str) -> str:
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 r"\1 BETWEEN now() - interval '1 day' AND now()", sql)
    return sql.replace("$tenant", "acme")


def test_there_are_dashboards_and_they_use_the_provisioned_datasource():
    uid = yaml.safe_load((ROOT / "provisioning/datasources/ispstream.yaml").read_text())[
        "datasources"][0]["uid"]
    assert DASHBOARDS
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_runs(pg_dsn, path):
    board = json.loads(path.read_text())
    queries = [(p["title"], t["rawSql"]) for p in board["panels"] for t in p["targets"]]
    queries += [("variable " + v["name"], v["query"]) for v in board["templating"]["list"]]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO tenants VALUES ('acme', 'UTC', 'EUR')")
        for title, sql in queries:
            assert "$" not in _expand(sql), f"{title}: a macro this test does not expand"
            conn.execute(_expand(sql)).fetchall()
