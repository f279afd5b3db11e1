"""RADIUS re-authentication keeps the enforced state: real FreeRADIUS (the shipped
``deploy/freeradius`` module and policy), a real ``ispstream api`` process and radclient
Access-Requests; plus the endpoint's own answers, in process.

Enforced states are seeded with SQL as the table owner; the API reads them as the
restricted role under row-level security.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psycopg
import pytest

from conftest import missing_service
from ispstream.apikeys import create_key
from portal_api.radius_replies import RadiusMappingError, load, parse_rate, rest_body
from procs import ROOT, free_port, wait_until
from tests.integration.api_world import (
    api_client,
    apply_inventory,
    auth,
    beta_basic,
    start_api,
)

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy" / "freeradius"
SECRET = "radius-test-secret"
NOW = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)

INVENTORY = """\
tenants:
  - id: acme
    timezone: Europe/Berlin
    currency: EUR
    plans:
      - {id: basic, monthly_fee: "10.00"}
      - {id: garden, monthly_fee: "10.00"}
    nas:
      - {ip: 192.0.2.1, name: mt-1, secret: s1, vendor: mikrotik}
      - {ip: 192.0.2.3, name: hw-1, secret: s3, vendor: huawei}
      - {ip: "2001:db8::1", name: cs-1, secret: s4, vendor: cisco}
    subscribers:
      - {username: alice, plan: basic}
      - {username: dave, plan: basic}
      - {username: sam, plan: basic}
      - {username: gina, plan: garden}
      - {username: olga, plan: basic}
""" + beta_basic("alice", "dave")

# (tenant, username, state, rate, until)
STATES = [
    ("acme", "dave", "throttled", "2M/2M", None),
    ("acme", "sam", "suspended", None, None),
    ("acme", "gina", "suspended", None, None),
    # lifted by itself at the end of the cycle: no longer enforced
    ("acme", "olga", "suspended", None, "2024-03-01T00:00Z"),
    ("acme", "alice", "normal", None, None),
    # the other tenant's subscribers of the same names
    ("beta", "alice", "suspended", None, None),
    ("beta", "dave", "normal", None, None),
]


@pytest.fixture
def world(pg_dsn, tmp_path):
    apply_inventory(pg_dsn, tmp_path, INVENTORY)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE plans SET walled_garden = 'suspended' "
                     "WHERE tenant_id = 'acme' AND id = 'garden'")
        for tenant, user, state, rate, until in STATES:
            conn.execute(
                "INSERT INTO enforcement_state (tenant_id, username, state, rate, reason, "
                "source, intent_id, since, until) VALUES (%s, %s, %s, %s, 'test', "
                "'operator', 'i-' || %s, '2024-02-01T00:00Z', %s)",
                (tenant, user, state, rate, user, until))
    keys = {
        "acme": create_key(pg_dsn, "acme", "radius"),
        "beta": create_key(pg_dsn, "beta", "radius"),
        "operator": create_key(pg_dsn, "acme", "operator"),
    }
    return pg_dsn, keys


# --- the endpoint, in process ----------------------------------------------------------


@pytest.fixture
def api(world):
    dsn, keys = world
    with api_client(dsn, NOW) as client:
        yield client, keys


def authorize(client, key: str | None, user: str, nas: str | None = "192.0.2.1",
              as_json: bool = False, **extra) -> httpx.Response:
    fields = {"User-Name": user, **({"NAS-IP-Address": nas} if nas else {}), **extra}
    if as_json:
        return client.post("/v1/radius/authorize", json=fields, headers=auth(key))
    return client.post("/v1/radius/authorize", data=fields, headers=auth(key))


def test_answers_per_enforced_state_and_vendor(api):
    client, keys = api
    key = keys["acme"]
    for user in ("alice", "olga", "nobody"):
        r = authorize(client, key, user)
        assert (r.status_code, r.content) == (204, b""), user
    r = authorize(client, key, "dave")
    assert r.status_code == 200
    assert r.json() == {"reply:Mikrotik-Rate-Limit": {"op": ":=", "do_xlat": False,
                                                      "value": ["2M/2M"]}}
    r = authorize(client, key, "dave", nas="192.0.2.3")
    assert r.json() == {
        "reply:Huawei-Input-Average-Rate": {"op": ":=", "do_xlat": False,
                                            "value": ["2000000"]},
        "reply:Huawei-Output-Average-Rate": {"op": ":=", "do_xlat": False,
                                             "value": ["2000000"]}}
    r = authorize(client, key, "dave", nas=None, **{"NAS-IPv6-Address": "2001:db8:0::1"})
    assert r.json() == {"reply:Cisco-Account-Info": {"op": ":=", "do_xlat": False,
                                                     "value": ["Arate-2M_2M"]}}
    r = authorize(client, key, "sam")
    assert (r.status_code, r.json()) == (401, {})
    r = authorize(client, key, "gina")
    assert (r.status_code, r.json()) == (200, {"reply:Mikrotik-Address-List": {
        "op": ":=", "do_xlat": False, "value": ["suspended"]}})


def test_tenants_are_isolated(api):
    client, keys = api
    # beta's alice is suspended, acme's is not; beta's dave is normal, acme's throttled
    assert authorize(client, keys["acme"], "alice").status_code == 204
    assert authorize(client, keys["beta"], "alice", nas="192.0.2.2").status_code == 401
    assert authorize(client, keys["beta"], "dave", nas="192.0.2.2").status_code == 204
    # a NAS of the other tenant is unknown to this key
    r = authorize(client, keys["acme"], "alice", nas="192.0.2.2")
    assert r.status_code == 404 and "no NAS" in r.json()["detail"]
    assert authorize(client, keys["beta"], "dave", nas="192.0.2.1").status_code == 404


def test_rest_module_json_and_flat_json_bodies(api):
    client, keys = api
    native = {"User-Name": {"type": "string", "value": ["dave"]},
              "User-Password": {"type": "string", "value": ["never looked at"]},
              "NAS-IP-Address": {"type": "ipaddr", "value": ["192.0.2.1"]}}
    r = client.post("/v1/radius/authorize", json=native,
                    headers={"Authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 200 and "reply:Mikrotik-Rate-Limit" in r.json()
    assert authorize(client, keys["acme"], "sam", as_json=True).status_code == 401


def test_anything_but_a_radius_key_is_403_never_401(api):
    # the rest module turns a 401 into Access-Reject: a key mistake must not reject
    client, keys = api
    for key in (None, "isk_nothing", keys["operator"]):
        r = authorize(client, key, "alice")
        assert r.status_code == 403, (key, r.text)


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        ({"NAS-IP-Address": "192.0.2.1"}, "User-Name", "User-Name is required"),
        ({"User-Name": "alice"}, "NAS-IP-Address", "must be an IP address"),
        ({"User-Name": "alice", "NAS-IP-Address": "bng-1"}, "NAS-IP-Address",
         "must be an IP address"),
        ({"User-Name": "x" * 254, "NAS-IP-Address": "192.0.2.1"}, "User-Name",
         "1 to 253 characters"),
    ],
)
def test_bad_requests_are_422(api, fields, loc, message):
    client, keys = api
    r = client.post("/v1/radius/authorize", data=fields,
                    headers={"Authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 422, r.text
    [err] = r.json()["detail"]
    assert err["loc"] == ["body", loc] and message in err["msg"]


def test_radius_keys_use_nothing_else(api):
    client, keys = api
    r = client.get("/v1/sessions", headers={"Authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 403


# --- the attribute mapping ------------------------------------------------------------


@pytest.mark.parametrize(("text", "up", "down"), [
    ("2M/2M", 2_000_000, 2_000_000), ("512k/4M", 512_000, 4_000_000),
    ("1.5M/750k", 1_500_000, 750_000), ("1G/100M", 10**9, 10**8), ("10M", 10**7, 10**7),
    ("64000/128000", 64_000, 128_000),
])
def test_parse_rate(text, up, down):
    rate = parse_rate(text)
    assert (rate.up_bps, rate.down_bps) == (up, down)


@pytest.mark.parametrize("text", ["", "fast", "2X/2M", "2M/", "0/1M", "1.5/1M", "2M/2M/2M"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError):
        parse_rate(text)


def test_shipped_mapping_renders_every_vendor():
    replies = load()
    rate = parse_rate("1.5M/4M")
    assert replies.throttle("juniper", rate) == {
        "ERX-Ingress-Policy-Name": ["police-1500k"], "ERX-Egress-Policy-Name": ["police-4000k"]}
    assert replies.throttle("generic", rate) == {"Filter-Id": ["rate-1p5M_4M"]}
    # a vendor the mapping does not know gets generic's attributes
    assert replies.throttle("acme-bng", rate) == {"Filter-Id": ["rate-1p5M_4M"]}
    assert replies.walled_garden("huawei", "wg") == {"Filter-Id": ["wg"]}
    assert rest_body({"Cisco-AVPair": ["a=1", "b=2"]}) == {
        "reply:Cisco-AVPair": {"op": "+=", "do_xlat": False, "value": ["a=1", "b=2"]}}


@pytest.mark.parametrize(("text", "message"), [
    ("mikrotik: {throttle: {Mikrotik-Rate-Limit: '{speed}'}}", "unknown placeholder"),
    ("mikrotik: {walled_garden: {Mikrotik-Address-List: '{rate}'}}", "unknown placeholder"),
    ("mikrotik: {coa: {}}", "expected only throttle and walled_garden"),
    ("mikrotik: {throttle: {'Bad Name': x}}", "is not an attribute name"),
    ("mikrotik: {throttle: {Mikrotik-Rate-Limit: []}}", "non-empty string"),
    ("- a", "expected a map of vendors"),
])
def test_bad_mapping_files_are_refused(tmp_path, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(RadiusMappingError, match=message):
        load(path)


# --- real FreeRADIUS + radclient against a real `ispstream api` ------------------------

RADIUSD_CONF = """\
# A private FreeRADIUS instance for the test: the shipped ispstream module and policy
# ($INCLUDEd verbatim) in one virtual server, as a site would use them.
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = @DIR@
sbindir = ${exec_prefix}/sbin
logdir = @DIR@/log
raddbdir = @DIR@
radacctdir = ${logdir}
name = freeradius
confdir = ${raddbdir}
modconfdir = ${confdir}/mods-config
certdir = ${confdir}/certs
run_dir = @DIR@/run
db_dir = ${raddbdir}
libdir = /usr/lib/freeradius
pidfile = ${run_dir}/${name}.pid
max_request_time = 30
cleanup_delay = 0
max_requests = 16384
hostname_lookups = no

log {
	destination = stdout
	colourise = no
}

security {
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}

proxy_requests = no

thread pool {
	start_servers = 2
	max_servers = 8
	min_spare_servers = 1
	max_spare_servers = 4
	max_requests_per_server = 0
}

client test_nas {
	ipaddr = 127.0.0.1
	secret = @SECRET@
}

modules {
	always ok {
		rcode = ok
	}
	always reject {
		rcode = reject
	}
	expr {
	}
	pap {
	}
	# stands in for the site's user store: every user, password "test"
	files {
		filename = ${confdir}/users
	}
	$INCLUDE ${confdir}/mods-available/ispstream
}

policy {
	$INCLUDE ${confdir}/policy.d/ispstream
}

server ispstream_test {
	listen {
		type = auth
		ipaddr = 127.0.0.1
		port = @PORT@
	}
	authorize {
		files
		$INCLUDE ${confdir}/sites-available/ispstream-authorize
		pap
	}
	authenticate {
		Auth-Type PAP {
			pap
		}
	}
}
"""


@dataclass
class Answer:
    code: str
    attributes: dict[str, str] = field(default_factory=dict)


class FreeRadius:
    """A FreeRADIUS server on a private config dir built from ``deploy/freeradius``."""

    def __init__(self, binary: str, directory: Path, api_url: str, key: str,
                 fail_closed: bool = False) -> None:
        for sub in ("log", "run", "mods-available", "policy.d", "sites-available"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        for rel in ("mods-available/ispstream", "policy.d/ispstream",
                    "sites-available/ispstream-authorize"):
            shutil.copy(DEPLOY / rel, directory / rel)
        if fail_closed:
            # the README's one-line change
            policy = directory / "policy.d" / "ispstream"
            text = policy.read_text()
            assert text.count("ispstream_unavailable {\n\tok\n}") == 1
            policy.write_text(text.replace("ispstream_unavailable {\n\tok\n}",
                                           "ispstream_unavailable {\n\treject\n}"))
        (directory / "users").write_text('DEFAULT\tCleartext-Password := "test"\n')
        self.port = free_port(socket.SOCK_DGRAM)
        (directory / "radiusd.conf").write_text(
            RADIUSD_CONF.replace("@DIR@", str(directory)).replace("@PORT@", str(self.port))
            .replace("@SECRET@", SECRET))
        self.log_path = directory / "radiusd.out"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [binary, "-f", "-d", str(directory)], stdout=self._log,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ISPSTREAM_API_URL": api_url,
                 "ISPSTREAM_RADIUS_API_KEY": key})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()


_RECEIVED = re.compile(r"^Received (Access-\w+) Id")
_ATTR = re.compile(r'^\s+([\w-]+) = "?(.*?)"?$')


def access_request(radclient: str, port: int, user: str, nas_ip: str = "192.0.2.1",
                   password: str = "test") -> Answer | None:
    """One Access-Request with radclient; the answer (None: no answer)."""
    attrs = f'User-Name = "{user}", User-Password = "{password}", NAS-IP-Address = {nas_ip}'
    r = subprocess.run([radclient, "-x", "-t", "3", "-r", "1", f"127.0.0.1:{port}", "auth",
                        SECRET], input=attrs + "\n", capture_output=True, text=True,
                       timeout=60)
    answer = None
    for line in r.stdout.splitlines():
        m = _RECEIVED.match(line)
        if m:
            answer = Answer(m.group(1))
            continue
        m = _ATTR.match(line)
        if answer is not None and m:
            answer.attributes[m.group(1)] = m.group(2)
    return answer


@pytest.fixture
def live(world, tmp_path, require_binary):
    """A real `ispstream api` and a FreeRADIUS using the shipped config with acme's key."""
    freeradius = require_binary("freeradius")
    radclient = require_binary("radclient")
    if not Path("/usr/lib/freeradius/rlm_rest.so").exists():
        missing_service("FreeRADIUS's rest module (Debian package freeradius-rest)")
    dsn, keys = world
    api, base = start_api(dsn, tmp_path)
    servers: list[FreeRadius] = []
    try:
        wait_until(lambda: httpx.get(f"{base}/openapi.json", timeout=5).status_code == 200,
                   timeout=60, what="the API to serve")

        def start(name: str, **kw) -> FreeRadius:
            server = FreeRadius(freeradius, tmp_path / name, base, keys["acme"], **kw)
            servers.append(server)
            wait_until(lambda: access_request(radclient, server.port, "alice") is not None,
                       timeout=60, what=f"FreeRADIUS {name} to answer")
            return server

        yield api, start, radclient
    finally:
        for server in servers:
            server.stop()
        api.stop()


def test_reauthentication_keeps_the_enforced_state(live):
    api, start, radclient = live
    server = start("radius")

    def ask(user, nas_ip="192.0.2.1", password="test"):
        answer = access_request(radclient, server.port, user, nas_ip, password)
        assert answer is not None, server.log()
        return answer

    # nothing enforced: accepted as the site's own configuration says, nothing added
    assert ask("alice") == Answer("Access-Accept", {})
    assert ask("olga") == Answer("Access-Accept", {})  # its suspension has lifted
    assert ask("nobody") == Answer("Access-Accept", {})
    # throttled: the NAS vendor's rate attribute
    assert ask("dave") == Answer("Access-Accept", {"Mikrotik-Rate-Limit": "2M/2M"})
    assert ask("dave", "192.0.2.3") == Answer("Access-Accept", {
        "Huawei-Input-Average-Rate": "2000000", "Huawei-Output-Average-Rate": "2000000"})
    # suspended: rejected, or into the plan's walled garden
    assert ask("sam").code == "Access-Reject"
    assert ask("gina") == Answer("Access-Accept", {"Mikrotik-Address-List": "suspended"})
    # ispstream adds to authentication, never replaces it
    assert ask("alice", password="wrong").code == "Access-Reject"
    # beta's alice is suspended and beta's dave normal: not acme's business
    assert ask("alice").code == "Access-Accept"
    # a NAS that is not acme's is rejected
    assert ask("alice", "192.0.2.2").code == "Access-Reject"
    assert "Traceback" not in api.log()


def test_when_ispstream_is_unreachable_fail_open_or_closed(live):
    api, start, radclient = live
    open_ = start("fail-open")
    closed = start("fail-closed", fail_closed=True)
    assert access_request(radclient, closed.port, "alice").code == "Access-Accept"
    assert access_request(radclient, open_.port, "sam").code == "Access-Reject"
    api.stop()
    # fail-open: everyone who authenticates gets in, the suspended one too
    for user in ("alice", "sam"):
        answer = access_request(radclient, open_.port, user)
        assert answer is not None and answer.code == "Access-Accept", open_.log()
    # fail-closed: nobody does
    for user in ("alice", "sam"):
        answer = access_request(radclient, closed.port, user)
        assert answer is not None and answer.code == "Access-Reject", closed.log()
