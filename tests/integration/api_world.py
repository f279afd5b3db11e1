"""Set-up shared by the API tests: inventories, keys' headers, the app in process and a
real ``ispstream api`` process.

- ``acme_home`` / ``beta_basic``: inventory YAML of the two tenants most API tests use
  (acme in EUR with one plan ``home``; beta, the other tenant, in JPY), with the given
  subscribers; ``tenants(...)`` makes a document of them.
- ``apply_inventory``: writes an inventory file into a test's directory and applies it.
- ``auth`` / ``get``: a key's ``Authorization`` header (none without a key); a GET with it.
- ``settings_for`` / ``api_client``: the API app on a test database in a ``TestClient``
  (no Kafka unless given).
- ``start_api``, ``wait_healthy``, ``assert_clean_exit``: an ``ispstream api`` process on
  a free port; waiting for its health check; checking that it shut down cleanly.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from ispstream.inventory import apply_file
from ispstream.settings import Settings
from portal_api.app import create_app
from portal_api.publisher import Publisher
from tests.procs import Proc, free_port, wait_until

_ONE_PLAN_TENANT = """\
  - id: {tenant}
    timezone: {timezone}
    currency: {currency}
    plans:
      - {{id: {plan}, monthly_fee: "{fee}"}}
    nas:
      - {{ip: {nas_ip}, name: {nas_name}, secret: {secret}}}
    subscribers:
"""


def _one_plan_tenant(usernames: tuple[str, ...], **fields: str) -> str:
    return _ONE_PLAN_TENANT.format(**fields) + "".join(
        f"      - {{username: {u}, plan: {fields['plan']}}}\n" for u in usernames)


def acme_home(*usernames: str) -> str:
    """Tenant acme (Europe/Berlin, EUR) with plan ``home``, NAS bng-1 (192.0.2.1) and
    ``usernames`` on ``home``: one item of an inventory's ``tenants`` list."""
    return _one_plan_tenant(usernames, tenant="acme", timezone="Europe/Berlin",
                            currency="EUR", plan="home", fee="30.00", nas_ip="192.0.2.1",
                            nas_name="bng-1", secret="s1")


def beta_basic(*usernames: str) -> str:
    """Tenant beta (Asia/Tokyo, JPY: no decimals) with plan ``basic``, NAS tokyo-1
    (192.0.2.2) and ``usernames`` on ``basic``: one item of an inventory's ``tenants``
    list."""
    return _one_plan_tenant(usernames, tenant="beta", timezone="Asia/Tokyo",
                            currency="JPY", plan="basic", fee="3000", nas_ip="192.0.2.2",
                            nas_name="tokyo-1", secret="s2")


def tenants(*items: str) -> str:
    """An inventory document of these ``tenants`` items."""
    return "tenants:\n" + "".join(items)


def apply_inventory(dsn: str, tmp_path: Path, text: str) -> None:
    """Write ``text`` to ``inventory.yaml`` in ``tmp_path`` and apply it to ``dsn``."""
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    apply_file(dsn, path)


def auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def get(client: TestClient, key: str | None, url: str, **params) -> httpx.Response:
    return client.get(url, params=params, headers=auth(key))


def settings_for(dsn: str, kafka: str = "", **settings) -> Settings:
    return Settings(_env_file=None, database_url=dsn, kafka_bootstrap=kafka, **settings)


def api_client(dsn: str, now: datetime | None = None, kafka: str = "", *,
               publisher: Publisher | None = None, **settings) -> TestClient:
    """The API app on ``dsn`` in a ``TestClient``: its clock stopped at ``now`` (the real
    clock without), Kafka at ``kafka`` (none by default) or ``publisher`` in place of the
    Kafka publisher, and any other ``settings``."""
    clock = (lambda: now) if now is not None else None
    return TestClient(create_app(settings_for(dsn, kafka, **settings), clock=clock,
                                 publisher=publisher))


def start_api(dsn: str, tmp_path: Path, kafka: str = "",
              topic_prefix: str | None = None) -> tuple[Proc, str]:
    """Start ``ispstream api`` on a free port of 127.0.0.1 (its log in ``tmp_path``);
    returns the process and its base URL. Without ``topic_prefix`` the process keeps
    the environment's."""
    port = free_port()
    env = {
        "ISPSTREAM_DATABASE_URL": dsn,
        "ISPSTREAM_API_ADDR": f"127.0.0.1:{port}",
        "ISPSTREAM_KAFKA_BOOTSTRAP": kafka,
    }
    if topic_prefix is not None:
        env["ISPSTREAM_TOPIC_PREFIX"] = topic_prefix
    return Proc("api", ["api"], env, tmp_path), f"http://127.0.0.1:{port}"


def wait_healthy(base: str, timeout: float) -> httpx.Response:
    """Wait for the API at ``base`` to answer ``/healthz`` with 200; returns the answer."""
    return wait_until(
        lambda: (r := httpx.get(f"{base}/healthz", timeout=5)).status_code == 200 and r,
        timeout=timeout, what="the API to report healthy")


def assert_clean_exit(proc: Proc, code: int) -> None:
    """The stopped API process (exit ``code``) shut down gracefully, without a trace."""
    log = proc.log_path.read_text(errors="replace")
    # uvicorn shuts down gracefully, then re-raises SIGTERM: -15 is a clean stop too
    assert code in (0, -15), log
    assert "Application shutdown complete" in log and "Traceback" not in log
