"""A small asyncio SNMP client for table walks: GETBULK over several columns at once.

- SNMPv2c goes through the project's own BER codec (``ber.py``) on one shared UDP socket
  per address family, demultiplexed by request id: pysnmp spends ~0.4 ms of CPU per
  varbind, this path a few microseconds, and a 1,000-OLT optics poll is mostly varbinds.
- SNMPv3 (USM auth/priv) goes through pysnmp, which does the engine discovery, keys,
  digests and encryption.

Both sit behind ``Session``: ``walk_columns(columns)`` walks table columns with GETBULK
requests that carry several columns each (a column leaves the request once it leaves
its subtree), at most ``max_inflight`` requests in flight per device, each request
retried ``retries`` times after ``timeout`` seconds. Errors are ``SnmpError`` with a
``kind``: ``timeout``, ``auth``, ``error-status`` or ``protocol``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from dataclasses import dataclass, field

from collectors.onu.ber import (
    END_OF_MIB_VIEW, EXCEPTIONS, ERROR_STATUS, NO_SUCH_INSTANCE, NO_SUCH_OBJECT, OID,
    RESPONSE, BerError, decode_response, encode_getbulk,
)

log = logging.getLogger(__name__)

# Varbinds asked for per GETBULK response (columns x max-repetitions). Agents cap it
# themselves (snmpsim at 64, many OLTs lower); a tooBig answer halves it.
DEFAULT_VARBIND_BUDGET = 48

Row = tuple[OID, object]  # (index suffix after the column, value)


class SnmpError(Exception):
    """A failed SNMP exchange; ``kind`` is timeout, auth, error-status or protocol."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """How to reach one device (from its ``devices`` row)."""

    host: str
    port: int = 161
    version: str = "2c"
    community: str | None = field(default=None, repr=False)
    v3_user: str | None = None
    v3_auth_protocol: str | None = None
    v3_auth_key: str | None = field(default=None, repr=False)
    v3_priv_protocol: str | None = None
    v3_priv_key: str | None = field(default=None, repr=False)
    timeout_s: float = 2.0
    retries: int = 1
    max_inflight: int = 2


# -- SNMPv2c over the project's codec ---------------------------------------------------

class _UdpProtocol(asyncio.DatagramProtocol):
    """One UDP socket for many devices; responses matched by request id and community
    (not by source address: a multi-homed agent may answer from another address)."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future, bytes]] = {}
        self.stats = stats

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            community, response = decode_response(data)
        except BerError:
            self.stats["malformed_responses"] += 1
            return
        entry = self.pending.get(response.request_id)
        if entry is None or community != entry[1]:
            self.stats["unexpected_responses"] += 1
            return
        if not entry[0].done():
            entry[0].set_result(response)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and the like
        log.debug("snmp socket error: %s", exc)


class V2cTransport:
    """Sends v2c requests and waits for their responses (retransmitting)."""

    def __init__(self) -> None:
        self.stats = {"malformed_responses": 0, "unexpected_responses": 0}
        self._protocols: dict[int, _UdpProtocol] = {}

    async def _protocol(self, family: int) -> _UdpProtocol:
        proto = self._protocols.get(family)
        if proto is None:
            loop = asyncio.get_running_loop()
            bind = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
            _, proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self.stats), local_addr=bind, family=family)
            self._protocols[family] = proto
        return proto

    async def request(self, addr: tuple[str, int], community: bytes, oids: list[OID],
                      max_repetitions: int, timeout: float, retries: int):
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        proto = await self._protocol(family)
        request_id = random.getrandbits(31)
        while request_id in proto.pending:
            request_id = random.getrandbits(31)
        message = encode_getbulk(community, request_id, oids, max_repetitions)
        future = asyncio.get_running_loop().create_future()
        proto.pending[request_id] = (future, community)
        try:
            for _ in range(retries + 1):
                proto.transport.sendto(message, addr)
                done, _ = await asyncio.wait((future,), timeout=timeout)
                if done:
                    return future.result()
        finally:
            del proto.pending[request_id]
            if not future.done():
                future.cancel()
        raise SnmpError("timeout", f"no response from {addr[0]}:{addr[1]} after "
                        f"{retries + 1} attempt(s) of {timeout:g}s")

    def close(self) -> None:
        for proto in self._protocols.values():
            if proto.transport is not None:
                proto.transport.close()
        self._protocols.clear()


# -- SNMPv3 through pysnmp ---------------------------------------------------------------

_AUTH = {"MD5": "usmHMACMD5AuthProtocol", "SHA": "usmHMACSHAAuthProtocol",
         "SHA224": "usmHMAC128SHA224AuthProtocol", "SHA256": "usmHMAC192SHA256AuthProtocol",
         "SHA384": "usmHMAC256SHA384AuthProtocol", "SHA512": "usmHMAC384SHA512AuthProtocol"}
# AES192/256 use the Blumenthal key extension (the draft net-snmp implements);
# Cisco's variant is the other one.
_PRIV = {"DES": "usmDESPrivProtocol", "AES": "usmAesCfb128Protocol",
         "AES192": "usmAesBlumenthalCfb192Protocol", "AES256": "usmAesBlumenthalCfb256Protocol"}
_AUTH_ERRORS = {"UnknownUserName", "WrongDigest", "DecryptionError", "UnknownEngineID",
                "NotInTimeWindow", "UnsupportedSecurityLevel", "AuthenticationError",
                "AuthenticationFailure", "UnknownSecurityName", "ReportPduReceived"}


def _plain(value):
    """A pysnmp value as the codec would decode it."""
    name = type(value).__name__
    if name in ("EndOfMibView", "EndOfMib"):
        return END_OF_MIB_VIEW
    if name == "NoSuchObject":
        return NO_SUCH_OBJECT
    if name == "NoSuchInstance":
        return NO_SUCH_INSTANCE
    if name in ("OctetString", "Opaque", "Bits"):
        return bytes(value.asOctets())
    if name == "IpAddress":
        return ".".join(str(b) for b in value.asOctets())
    if name == "ObjectIdentifier":
        return tuple(value)
    if name == "Null":
        return None
    return int(value)


class V3Transport:
    """SNMPv3 requests through one shared pysnmp engine."""

    def __init__(self) -> None:
        from pysnmp.hlapi.v3arch import asyncio as hl

        self._hl = hl
        self._engine = hl.SnmpEngine()
        self._targets: dict[tuple, object] = {}

    def _auth(self, t: Target):
        hl = self._hl
        auth = getattr(hl, _AUTH[t.v3_auth_protocol]) if t.v3_auth_protocol else None
        priv = getattr(hl, _PRIV[t.v3_priv_protocol]) if t.v3_priv_protocol else None
        return hl.UsmUserData(
            t.v3_user, authKey=t.v3_auth_key if auth else None,
            privKey=t.v3_priv_key if priv else None,
            authProtocol=auth or hl.usmNoAuthProtocol,
            privProtocol=priv or hl.usmNoPrivProtocol)

    async def request(self, t: Target, oids: list[OID], max_repetitions: int):
        hl = self._hl
        key = (t.host, t.port, t.timeout_s, t.retries)
        transport = self._targets.get(key)
        if transport is None:
            cls = hl.Udp6TransportTarget if ":" in t.host else hl.UdpTransportTarget
            transport = await cls.create((t.host, t.port), timeout=t.timeout_s,
                                         retries=t.retries)
            self._targets[key] = transport
        try:
            err, status, index, varbinds = await hl.bulk_cmd(
                self._engine, self._auth(t), transport, hl.ContextData(), 0, max_repetitions,
                *(hl.ObjectType(hl.ObjectIdentity(".".join(map(str, o)))) for o in oids),
                lookupMib=False)
        except Exception as exc:  # noqa: BLE001 - pysnmp raises its own error classes
            raise SnmpError("protocol", f"{t.host}:{t.port}: SNMPv3: {exc}") from None
        if err:
            kind = "auth" if type(err).__name__ in _AUTH_ERRORS else (
                "timeout" if type(err).__name__ == "RequestTimedOut" else "protocol")
            raise SnmpError(kind, f"{t.host}:{t.port}: {err}")
        return int(status), int(index), [(tuple(vb[0]), _plain(vb[1])) for vb in varbinds]

    def close(self) -> None:
        try:
            self._engine.close_dispatcher()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


# -- sessions and walks ------------------------------------------------------------------

class SnmpClient:
    """Owns the transports; hands out one ``Session`` per device."""

    def __init__(self) -> None:
        self.v2c = V2cTransport()
        self._v3: V3Transport | None = None

    def v3(self) -> V3Transport:
        if self._v3 is None:
            self._v3 = V3Transport()
        return self._v3

    def session(self, target: Target) -> "Session":
        return Session(self, target)

    @property
    def stats(self) -> dict[str, int]:
        return self.v2c.stats

    def close(self) -> None:
        self.v2c.close()
        if self._v3 is not None:
            self._v3.close()


class Session:
    """Requests to one device, at most ``target.max_inflight`` at a time."""

    def __init__(self, client: SnmpClient, target: Target) -> None:
        if target.version not in ("2c", "3"):
            raise ValueError(f"unsupported SNMP version {target.version!r}")
        if target.version == "2c" and target.community is None:
            raise ValueError("SNMPv2c needs a community")
        if target.version == "3" and not target.v3_user:
            raise ValueError("SNMPv3 needs a user")
        self.client = client
        self.target = target
        self._slots = asyncio.Semaphore(max(1, target.max_inflight))
        self._addr = (target.host, target.port)
        self._community = (target.community or "").encode()
        self.requests = 0

    async def get_bulk(self, oids: list[OID], max_repetitions: int) -> list[tuple[OID, object]]:
        """One GETBULK; raises ``SnmpError`` (``error-status`` carries ``.status``)."""
        t = self.target
        async with self._slots:
            self.requests += 1
            if t.version == "2c":
                response = await self.client.v2c.request(
                    self._addr, self._community, oids, max_repetitions, t.timeout_s, t.retries)
                if response.pdu_type != RESPONSE:
                    raise SnmpError("protocol", f"unexpected PDU 0x{response.pdu_type:02x}")
                status, index, varbinds = (response.error_status, response.error_index,
                                           response.varbinds)
            else:
                status, index, varbinds = await self.client.v3().request(t, oids,
                                                                         max_repetitions)
        if status:
            err = SnmpError("error-status", f"{t.host}: {ERROR_STATUS.get(status, status)} "
                            f"(index {index})")
            err.status = status
            raise err
        return varbinds

    async def walk_columns(self, columns: list[OID],
                           budget: int = DEFAULT_VARBIND_BUDGET) -> dict[OID, list[Row]]:
        """Every row of each column: ``{column: [(index suffix, value), ...]}``.

        Columns are shared out over ``max_inflight`` concurrent walkers; each walker asks
        for all its unfinished columns in one GETBULK.
        """
        columns = list(dict.fromkeys(columns))
        groups = max(1, min(self.target.max_inflight, len(columns)))
        chunks = [columns[i::groups] for i in range(groups)]
        results: dict[OID, list[Row]] = {c: [] for c in columns}
        if len(chunks) == 1:
            await self._walk_group(chunks[0], results, budget)
            return results
        tasks = [asyncio.ensure_future(self._walk_group(chunk, results, budget))
                 for chunk in chunks]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:   # the first failure (or our cancellation) ends the other walkers too
            for task in tasks:
                if not task.done():
                    task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return results

    async def _walk_group(self, columns: list[OID], results: dict[OID, list[Row]],
                          budget: int) -> None:
        cursor = {c: c for c in columns}        # last OID seen per unfinished column
        while cursor:
            active = list(cursor)
            reps = max(1, budget // len(active))
            try:
                varbinds = await self.get_bulk([cursor[c] for c in active], reps)
            except SnmpError as exc:
                if getattr(exc, "status", None) == 1 and budget > len(active):  # tooBig
                    budget = max(len(active), budget // 2)
                    continue
                raise
            if not varbinds:
                raise SnmpError("protocol", "empty GETBULK response")
            width = len(active)
            progress = False
            for i, col in enumerate(active):
                prefix_len = len(col)
                rows = results[col]
                last = cursor[col]
                finished = False
                for j in range(i, len(varbinds), width):
                    oid, value = varbinds[j]
                    if value is END_OF_MIB_VIEW or oid[:prefix_len] != col:
                        finished = True
                        break
                    if oid <= last:
                        raise SnmpError("protocol", f"OID not increasing after "
                                        f"{'.'.join(map(str, last))}")
                    if value not in EXCEPTIONS:
                        rows.append((oid[prefix_len:], value))
                    last = oid
                if finished:
                    del cursor[col]
                    progress = True
                elif last != cursor[col]:
                    cursor[col] = last
                    progress = True
            if not progress:
                raise SnmpError("protocol", "GETBULK response made no progress")
