"""SNMP request transports: the project's own v2c codec, and pysnmp for SNMPv3.

- ``V2cTransport``: every v2c request of the process goes through one UDP socket per
  address family. Requests carry random 31-bit request ids; a response is matched by
  request id and community (not by source address: multi-homed routers often answer
  from another address). Retransmissions resend the same message, so a late answer to
  the first attempt still counts.
- ``V3Transport``: SNMPv3 authPriv through one shared pysnmp engine (pysnmp's USM: key
  localization, engine-id discovery, time windows). Its per-request CPU is several
  times the v2c path's; it is there for the devices that need it.

Both expose ``bulk(oids, non_repeaters, max_repetitions)`` per target (see
``Session``), the shape ``walk.walk`` needs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

from collectors.snmp.ber import (
    END_OF_MIB_VIEW,
    GET_BULK,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    RESPONSE,
    BerError,
    Message,
    decode_message,
    decode_subids,
    encode_oid,
    encode_request,
)
from collectors.snmp.devices import Device
from collectors.snmp.walk import SnmpError, Varbinds

log = logging.getLogger(__name__)

_MAX_REQUEST_ID = 2**31 - 1
RCVBUF_BYTES = 4 * 1024 * 1024
NO_PRIVACY = "SNMPv3 privacy unavailable (no cryptography package)"


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "V2cTransport") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.stats["socket_errors"] += 1


class V2cTransport:
    """SNMPv2c requests of every device over one socket per address family."""

    def __init__(self) -> None:
        self._sockets: dict[int, asyncio.DatagramTransport] = {}
        self._pending: dict[int, tuple[asyncio.Future, bytes]] = {}
        self._next_id = random.randrange(1, _MAX_REQUEST_ID)
        self.stats = {"requests": 0, "retransmissions": 0, "responses": 0, "timeouts": 0,
                      "malformed": 0, "unmatched": 0, "socket_errors": 0}

    async def _socket(self, host: str) -> asyncio.DatagramTransport:
        family = 6 if ":" in host else 4
        transport = self._sockets.get(family)
        if transport is None:
            loop = asyncio.get_running_loop()
            local = ("::", 0) if family == 6 else ("0.0.0.0", 0)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self),
                                                               local_addr=local)
            sock = transport.get_extra_info("socket")
            try:  # hundreds of devices answering at once: room for their responses
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            except OSError:
                pass
            self._sockets[family] = transport
        return transport

    def _received(self, data: bytes, addr: Any) -> None:
        try:
            msg = decode_message(data)
        except BerError:
            self.stats["malformed"] += 1
            return
        entry = self._pending.get(msg.request_id)
        if entry is None or msg.pdu != RESPONSE or msg.community != entry[1]:
            self.stats["unmatched"] += 1  # late (after the last retry), stray or spoofed
            return
        if not entry[0].done():
            self.stats["responses"] += 1
            entry[0].set_result(msg)

    def _request_id(self) -> int:
        rid = self._next_id
        self._next_id = rid + 1 if rid < _MAX_REQUEST_ID else 1
        return rid

    async def request(self, host: str, port: int, community: bytes, pdu: int,
                      oids: list[bytes], non_repeaters: int, max_repetitions: int,
                      timeout: float, retries: int) -> Message:
        """Send one request (retransmitted ``retries`` times) and return the response;
        raise ``SnmpError("timeout")`` when none came."""
        transport = await self._socket(host)
        rid = self._request_id()
        data = encode_request(community, pdu, rid, oids, non_repeaters, max_repetitions)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, community)
        try:
            for attempt in range(retries + 1):
                try:
                    transport.sendto(data, (host, port))
                except OSError as exc:
                    raise SnmpError(f"send failed: {exc.strerror or exc}") from None
                self.stats["requests" if attempt == 0 else "retransmissions"] += 1
                try:
                    return await asyncio.wait_for(asyncio.shield(future), timeout)
                except asyncio.TimeoutError:
                    continue
            self.stats["timeouts"] += 1
            raise SnmpError("timeout")
        finally:
            del self._pending[rid]
            if not future.done():
                future.cancel()

    def close(self) -> None:
        for transport in self._sockets.values():
            transport.close()
        self._sockets.clear()


# -- SNMPv3 through pysnmp ----------------------------------------------------------------

def _pysnmp():
    """pysnmp's pieces, imported on first use (v2c-only deployments never load them)."""
    from pyasn1.type import univ
    from pysnmp.entity.rfc3413 import cmdgen
    from pysnmp.hlapi.v3arch.asyncio import auth, lcd, transport
    from pysnmp.proto import errind, rfc1902, rfc1905

    return univ, cmdgen, auth, lcd, transport, errind, rfc1902, rfc1905


def privacy_available() -> bool:
    """Whether pysnmp can encrypt (it needs the ``cryptography`` package for AES/DES)."""
    _pysnmp()  # pysnmp's modules import each other in an order of their own
    from pysnmp.proto.secmod.rfc3826.priv import aes

    return not aes.PysnmpCryptoError


class V3Transport:
    """SNMPv3 authPriv requests through one pysnmp engine."""

    AUTH_FAILURES = ("WrongDigest", "UnknownUserName", "AuthenticationError",
                     "AuthenticationFailure", "DecryptionError", "UnknownEngineID",
                     "UnsupportedSecurityLevel", "UnknownSecurityName")
    # reported as ``snmp error: ...`` but of kind ``auth`` (see ``SnmpError.kind``)
    AUTH_KINDS = ("NotInTimeWindow", "ReportPduReceived")

    def __init__(self) -> None:
        (univ, cmdgen, auth, lcd, transport, errind, rfc1902, rfc1905) = _pysnmp()
        from pysnmp.entity.engine import SnmpEngine

        self._univ, self._rfc1902 = univ, rfc1902
        self._auth, self._transport, self._errind = auth, transport, errind
        self.engine = SnmpEngine()
        self._lcd = lcd.CommandGeneratorLcdConfigurator()
        self._gen = cmdgen.BulkCommandGenerator()
        self._null = univ.Null("")
        self._auth_protocols = {
            "MD5": auth.usmHMACMD5AuthProtocol, "SHA": auth.usmHMACSHAAuthProtocol,
            "SHA224": auth.usmHMAC128SHA224AuthProtocol,
            "SHA256": auth.usmHMAC192SHA256AuthProtocol,
            "SHA384": auth.usmHMAC256SHA384AuthProtocol,
            "SHA512": auth.usmHMAC384SHA512AuthProtocol,
        }
        # AES192/AES256: the Blumenthal key extension (draft-blumenthal-aes-usm, what
        # net-snmp calls AES-192/AES-256), not Cisco's Reeder variant
        self._priv_protocols = {
            "DES": auth.usmDESPrivProtocol, "AES": auth.usmAesCfb128Protocol,
            "AES192": auth.usmAesBlumenthalCfb192Protocol,
            "AES256": auth.usmAesBlumenthalCfb256Protocol,
        }
        self._exceptions = {
            rfc1905.NoSuchObject.tagSet: NO_SUCH_OBJECT,
            rfc1905.NoSuchInstance.tagSet: NO_SUCH_INSTANCE,
            rfc1905.EndOfMibView.tagSet: END_OF_MIB_VIEW,
        }
        self._octets = {rfc1902.OctetString.tagSet, rfc1902.Opaque.tagSet}
        self._oid_tag = rfc1902.ObjectIdentifier.tagSet
        self._ip_tag = rfc1902.IpAddress.tagSet
        self.stats = {"requests": 0, "timeouts": 0, "auth_failures": 0, "errors": 0}

    async def target(self, device: Device) -> str:
        """Configure ``device`` on the engine; return its target name for ``request``.
        (Inventory rows are always authPriv; without an auth or priv protocol the user
        is noAuthNoPriv or authNoPriv.)"""
        a = self._auth
        auth_protocol = (self._auth_protocols[device.v3_auth_protocol]
                         if device.v3_auth_protocol else None)
        priv_protocol = (self._priv_protocols[device.v3_priv_protocol]
                         if device.v3_priv_protocol and auth_protocol else None)
        auth = a.UsmUserData(
            device.v3_user, device.v3_auth_key if auth_protocol else None,
            device.v3_priv_key if priv_protocol else None,
            authProtocol=auth_protocol or a.usmNoAuthProtocol,
            privProtocol=priv_protocol or a.usmNoPrivProtocol)
        factory = (self._transport.Udp6TransportTarget if ":" in device.address
                   else self._transport.UdpTransportTarget)
        target = await factory.create((device.address, device.port),
                                      timeout=device.timeout_s, retries=device.retries)
        name, _ = self._lcd.configure(self.engine, auth, target, b"")
        return name

    def _plain(self, value: Any) -> object:
        tag = value.tagSet
        if tag in self._exceptions:
            return self._exceptions[tag]
        if tag in self._octets:
            return value.asOctets()
        if tag == self._oid_tag:
            return ".".join(map(str, value))
        if tag == self._ip_tag:
            return ".".join(map(str, value.asNumbers()))
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    async def request(self, target: str, oids: list[bytes], non_repeaters: int,
                      max_repetitions: int) -> tuple[int, int, Varbinds]:
        future = asyncio.get_running_loop().create_future()

        def done(engine, handle, error_indication, error_status, error_index, varbinds,
                 ctx) -> None:
            if not future.done():
                future.set_result((error_indication, error_status, error_index, varbinds))

        names = [(self._rfc1902.ObjectName(_oid_tuple(o)), self._null) for o in oids]
        self.stats["requests"] += 1
        try:
            self._gen.send_varbinds(self.engine, target, None, b"", non_repeaters,
                                    max_repetitions, names, done, None)
        except Exception as exc:  # pysnmp raises some errors while sending
            indication = getattr(exc, "get", lambda key: None)("errorIndication")
            self.stats["errors"] += 1
            if type(indication).__name__ == "EncryptionError":
                raise SnmpError(NO_PRIVACY) from None
            raise SnmpError(f"snmp error: {type(indication or exc).__name__}") from None
        error_indication, error_status, error_index, varbinds = await future
        if error_indication:
            kind = type(error_indication).__name__
            if kind == "RequestTimedOut":
                self.stats["timeouts"] += 1
                raise SnmpError("timeout")
            if kind in self.AUTH_FAILURES:
                self.stats["auth_failures"] += 1
                raise SnmpError("authentication failure")
            self.stats["errors"] += 1
            if kind == "EncryptionError":
                raise SnmpError(NO_PRIVACY)
            raise SnmpError(f"snmp error: {kind}",
                            kind="auth" if kind in self.AUTH_KINDS else None)
        plain = self._plain
        return (int(error_status), int(error_index),
                [(encode_oid(tuple(name)), plain(value)) for name, value in varbinds])

    def close(self) -> None:
        dispatcher = self.engine.transport_dispatcher
        if dispatcher is not None:
            dispatcher.close_dispatcher()


def _oid_tuple(encoded: bytes) -> tuple[int, ...]:
    subids = decode_subids(encoded)
    first = subids[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return head + subids[1:]


# -- per-device sessions ------------------------------------------------------------------

class Session:
    """How to send GETBULK requests to one device: its transport, target and limit of
    requests in flight (an ``asyncio.Semaphore`` shared by every request to it)."""

    def __init__(self, device: Device, v2c: V2cTransport | None = None,
                 v3: V3Transport | None = None) -> None:
        self.device = device
        self.inflight = asyncio.Semaphore(device.max_inflight)
        self._v2c = v2c
        self._v3 = v3
        self._community = (device.community or "").encode()
        self._v3_target: str | None = None
        self.peak_inflight = 0
        self._now_inflight = 0
        self.requests = 0  # GETBULK requests sent (retransmissions not counted)

    async def bulk(self, oids: list[bytes], non_repeaters: int,
                   max_repetitions: int) -> tuple[int, int, Varbinds]:
        async with self.inflight:
            self.requests += 1
            self._now_inflight += 1
            if self._now_inflight > self.peak_inflight:
                self.peak_inflight = self._now_inflight
            try:
                return await self._bulk(oids, non_repeaters, max_repetitions)
            finally:
                self._now_inflight -= 1

    async def _bulk(self, oids: list[bytes], non_repeaters: int,
                    max_repetitions: int) -> tuple[int, int, Varbinds]:
        d = self.device
        if d.version == "2c":
            msg = await self._v2c.request(d.address, d.port, self._community, GET_BULK, oids,
                                          non_repeaters, max_repetitions, d.timeout_s,
                                          d.retries)
            return msg.error_status, msg.error_index, msg.varbinds
        if self._v3_target is None:
            self._v3_target = await self._v3.target(d)
        return await self._v3.request(self._v3_target, oids, non_repeaters, max_repetitions)
