"""The optics poller's SNMP client against net-snmp's snmpd: the v2c path (own codec)
and the v3 path (pysnmp USM) walk the same tables to the same rows; wrong v3 keys are
``auth`` errors; snmpd's answers are what net-snmp's own snmpbulkwalk reads."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from collectors.onu.snmp import SnmpClient, SnmpError
from collectors.snmp.ber import parse_oid
from collectors.snmp.devices import Device
from tests.procs import free_port, wait_until

pytestmark = pytest.mark.integration

COLUMNS = [parse_oid(o) for o in ("1.3.6.1.2.1.2.2.1.2", "1.3.6.1.2.1.2.2.1.3",
                                  "1.3.6.1.2.1.1.9.1.2", "1.3.6.1.2.1.1.9.1.3")]
USERS = {  # user: (auth protocol, priv protocol)
    "u-sha-aes": ("SHA", "AES"),
    "u-sha256-aes": ("SHA256", "AES"),
    "u-md5-des": ("MD5", "DES"),
}
NET_SNMP_AUTH = {"SHA": "SHA", "SHA256": "SHA-256", "MD5": "MD5"}


def Target(address, port=161, version="2c", **fields) -> Device:
    return Device("t", "snmpd", "olt", address, port, version, **fields)


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory, require_binary_module) -> int:
    exe = require_binary_module("snmpd")
    work = tmp_path_factory.mktemp("snmpd")
    port = free_port(socket.SOCK_DGRAM)
    lines = [f"agentAddress udp:127.0.0.1:{port}", "rocommunity public 127.0.0.1"]
    for user, (auth, priv) in USERS.items():
        lines += [f'createUser {user} {NET_SNMP_AUTH[auth]} "authpass123" {priv} '
                  f'"privpass123"', f"rouser {user} priv"]
    conf = work / "snmpd.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([exe, "-f", "-C", "-c", str(conf), "-Lf", str(work / "snmpd.log"),
                             "-p", str(work / "snmpd.pid")],
                            env={**os.environ, "SNMP_PERSISTENT_DIR": str(work), "MIBS": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is None and walk(Target("127.0.0.1", port,
                                                               community="public"))[COLUMNS[0]],
                   60, "snmpd answering")
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def require_binary_module():
    import shutil

    from conftest import missing_service

    def _require(name: str) -> str:
        path = shutil.which(name) or (f"/usr/sbin/{name}"
                                      if os.path.exists(f"/usr/sbin/{name}") else None)
        if not path:
            missing_service(f"the `{name}` program")
        return path

    return _require


def walk(target: Target) -> dict:
    async def go():
        client = SnmpClient()
        try:
            return await client.session(target).walk_columns(COLUMNS)
        finally:
            client.close()
    return asyncio.run(go())


def test_v2c_and_v3_walk_the_same_rows(snmpd):
    v2c = walk(Target("127.0.0.1", snmpd, community="public", timeout_s=5))
    assert v2c[COLUMNS[0]] and v2c[COLUMNS[3]]           # interfaces, sysORTable
    for user, (auth, priv) in USERS.items():
        v3 = walk(Target("127.0.0.1", snmpd, version="3", v3_user=user,
                         v3_auth_protocol=auth, v3_auth_key="authpass123",
                         v3_priv_protocol=priv, v3_priv_key="privpass123", timeout_s=5))
        assert v3 == v2c, user


def test_v2c_rows_match_net_snmp(snmpd, require_binary_module):
    exe = require_binary_module("snmpbulkwalk")
    out = subprocess.run([exe, "-v2c", "-c", "public", "-On", "-Oq", "-Ov", "-Oe",
                          f"127.0.0.1:{snmpd}", "1.3.6.1.2.1.2.2.1.3"],
                         capture_output=True, text=True, timeout=30, env={**os.environ,
                                                                          "MIBS": ""})
    assert out.returncode == 0, out.stderr
    ours = walk(Target("127.0.0.1", snmpd, community="public"))[COLUMNS[1]]
    assert [str(v) for _, v in ours] == out.stdout.split()


def test_wrong_v3_key_is_an_auth_error(snmpd):
    with pytest.raises(SnmpError) as err:
        walk(Target("127.0.0.1", snmpd, version="3", v3_user="u-sha-aes",
                    v3_auth_protocol="SHA", v3_auth_key="wrongpass123",
                    v3_priv_protocol="AES", v3_priv_key="privpass123", timeout_s=2,
                    retries=0))
    assert err.value.kind == "auth"


def test_wrong_community_is_a_timeout(snmpd):
    with pytest.raises(SnmpError) as err:
        walk(Target("127.0.0.1", snmpd, community="nope", timeout_s=0.5, retries=1))
    assert err.value.kind == "timeout"
