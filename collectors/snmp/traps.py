"""The trap and inform receiver: SNMP notifications from known devices -> ``TrapEvent``.

pysnmp receives on ``ISPSTREAM_SNMP_TRAP_ADDR`` (v1 and v2c traps, informs, v3 authPriv
traps) and answers informs. Each notification is attributed to the device whose
inventory address is its **source address**, and checked against that device's
credentials:

- v1/v2c: the community must be that device's community (every device's community is
  registered, so pysnmp itself drops communities no device uses);
- v3: the user must be registered with the device's ``engine_id`` (the sender's engine
  id) -- pysnmp drops wrong keys, unknown users and unknown engine ids -- and the
  message's user and engine id must be that device's.

Dropped notifications are counted by reason (``unknown_source``, ``wrong_credentials``,
``bad_community``, and pysnmp's USM counters ``usm_wrong_digests``,
``usm_unknown_user_names``, ``usm_unknown_engine_ids``, ``usm_decryption_errors``,
``usm_not_in_time_windows``, ``usm_unsupported_sec_levels``).

The mapping from snmpTrapOID to ``kind`` (link_down, onu_los, ...) and to the interface,
PON and ONU id is data: ``traps.yaml`` next to this file (``TrapMapper``).
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from collectors.snmp.devices import Device
from ispstream.contracts import TrapEvent

log = logging.getLogger(__name__)

MAPPING_FILE = Path(__file__).with_name("traps.yaml")
SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
SYS_UPTIME_0 = "1.3.6.1.2.1.1.3.0"
KINDS = ("link_down", "link_up", "onu_los", "onu_dying_gasp", "onu_up", "cold_start",
         "warm_start", "other")


# -- mapping (pure) -----------------------------------------------------------------------

def _under(oid: str, prefix: str) -> bool:
    return oid == prefix or oid.startswith(prefix + ".")


@dataclass(frozen=True)
class Extract:
    """Where one field is found: a varbind's value, or a part of its instance index;
    ``lookup: ifName`` reads the result as an ifIndex and names it as the device does."""

    oid: str
    from_index: bool
    part: int | None = None
    lookup: str | None = None

    def find(self, varbinds: list[tuple[str, Any]],
             if_names: dict[int, str] | None = None) -> str | None:
        found = self._find(varbinds)
        if found is not None and self.lookup == "ifName" and if_names and found.isdigit():
            return if_names.get(int(found), found)
        return found

    def _find(self, varbinds: list[tuple[str, Any]]) -> str | None:
        for oid, value in varbinds:
            if not oid.startswith(self.oid + "."):
                continue
            if not self.from_index:
                text = value_text(value)
                return text if text else None
            index = oid[len(self.oid) + 1:].split(".")
            if self.part is None:
                return ".".join(index)
            try:
                return index[self.part]
            except IndexError:
                return None
        return None


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    oid: str | None
    oid_prefix: str | None
    text: re.Pattern | None
    if_index: Extract | None
    pon: Extract | None
    onu_id: Extract | None
    verified: bool

    def matches(self, trap_oid: str, texts: list[str]) -> bool:
        if self.oid is not None and trap_oid != self.oid:
            return False
        if self.oid_prefix is not None and not _under(trap_oid, self.oid_prefix):
            return False
        return self.text is None or any(self.text.search(t) for t in texts)


@dataclass(frozen=True)
class Mapped:
    kind: str
    if_index: int | None = None
    pon: str | None = None
    onu_id: str | None = None
    rule: str | None = None


def value_text(value: Any) -> str:
    """A varbind value as text: printable bytes as text, other bytes as hex."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + value.hex()
        if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
            return text
        return "0x" + value.hex()
    if value is None:
        return ""
    return str(value)


class TrapMapper:
    """The rules of ``traps.yaml``, tried in order."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def load(cls, path: Path = MAPPING_FILE) -> "TrapMapper":
        return cls.parse(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))

    @classmethod
    def parse(cls, data: dict, source: str = "<traps>") -> "TrapMapper":
        rules = []
        for i, raw in enumerate((data or {}).get("rules") or []):
            where = f"{source}: rules[{i}]"
            kind = raw.get("kind")
            if kind not in KINDS:
                raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}")
            if raw.get("oid") is None and raw.get("oid_prefix") is None:
                raise ValueError(f"{where}: give oid or oid_prefix")
            extract = {}
            for name in ("if_index", "pon", "onu_id"):
                spec = raw.get(name)
                if spec is None:
                    extract[name] = None
                elif "value_of" in spec or "index_of" in spec:
                    lookup = spec.get("lookup")
                    if lookup not in (None, "ifName"):
                        raise ValueError(f"{where}.{name}: lookup can only be ifName")
                    if "value_of" in spec:
                        extract[name] = Extract(str(spec["value_of"]).strip("."), False,
                                                lookup=lookup)
                    else:
                        extract[name] = Extract(str(spec["index_of"]).strip("."), True,
                                                spec.get("part"), lookup)
                else:
                    raise ValueError(f"{where}.{name}: give value_of or index_of")
            text = raw.get("text")
            rules.append(Rule(
                name=str(raw.get("name", f"rule {i}")), kind=kind,
                oid=str(raw["oid"]).strip(".") if raw.get("oid") is not None else None,
                oid_prefix=(str(raw["oid_prefix"]).strip(".")
                            if raw.get("oid_prefix") is not None else None),
                text=re.compile(text) if text else None, verified=bool(raw.get("verified")),
                **extract))
        return cls(rules)

    def map(self, trap_oid: str, varbinds: list[tuple[str, Any]],
            if_names: dict[int, str] | None = None) -> Mapped:
        """The kind and objects of a notification (``varbinds``: dotted OID, value;
        ``if_names``: the sending device's interface names by ifIndex, as last polled)."""
        texts = [value_text(v) for _, v in varbinds if isinstance(v, (bytes, str))]
        for rule in self.rules:
            if not rule.matches(trap_oid, texts):
                continue
            if_index = None
            if rule.if_index is not None:
                found = rule.if_index.find(varbinds)
                if found is not None and found.isdigit():
                    if_index = int(found)
            return Mapped(rule.kind, if_index,
                          rule.pon.find(varbinds, if_names) if rule.pon else None,
                          rule.onu_id.find(varbinds, if_names) if rule.onu_id else None,
                          rule.name)
        return Mapped("other")


# -- the receiver -------------------------------------------------------------------------

TRAP_RESULTS = ("accepted", "unknown_source", "wrong_credentials", "unparsable")
USM_COUNTERS = {
    "usm_wrong_digests": "usmStatsWrongDigests",
    "usm_unknown_user_names": "usmStatsUnknownUserNames",
    "usm_unknown_engine_ids": "usmStatsUnknownEngineIDs",
    "usm_decryption_errors": "usmStatsDecryptionErrors",
    "usm_not_in_time_windows": "usmStatsNotInTimeWindows",
    "usm_unsupported_sec_levels": "usmStatsUnsupportedSecLevels",
}


def open_trap_socket(bind: tuple[str, int]) -> socket.socket:
    host, port = bind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class TrapReceiver:
    """pysnmp notification receiver on one UDP socket; ``publish`` gets each accepted
    ``TrapEvent``. Call ``update(devices)`` whenever the inventory changes."""

    def __init__(self, sock: socket.socket, mapper: TrapMapper,
                 publish: Callable[[TrapEvent], None],
                 clock: Callable[[], float] = time.time,
                 if_names: Callable[[str, str], dict[int, str]] | None = None) -> None:
        from pysnmp.carrier.asyncio.dgram import udp, udp6
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import ntfrcv

        self._config = config
        self.mapper = mapper
        self.publish = publish
        self.clock = clock
        self.if_names = if_names or (lambda tenant_id, device_id: {})
        self.counts = dict.fromkeys(TRAP_RESULTS, 0)
        self.by_kind: dict[str, int] = {}
        self.engine = engine.SnmpEngine()
        ipv6 = sock.family == socket.AF_INET6
        carrier = (udp6.Udp6AsyncioTransport() if ipv6 else udp.UdpAsyncioTransport())
        config.add_transport(self.engine, (udp6.DOMAIN_NAME if ipv6 else udp.DOMAIN_NAME),
                             carrier.open_server_mode(sock=sock))
        self.address = sock.getsockname()[:2]
        self._by_address: dict[str, Device] = {}
        self._communities: dict[str, str] = {}  # community -> its index on the engine
        self._users: set[tuple[str, str]] = set()  # (user, engine id hex) registered
        self._local_users: set[str] = set()
        self._context: dict[str, Any] = {}
        self._security: tuple | None = None
        obs = self.engine.observer
        obs.register_observer(self._on_message, "rfc3412.receiveMessage:request")
        obs.register_observer(self._on_community, "rfc2576.processIncomingMsg")
        obs.register_observer(self._on_usm, "rfc3414.processIncomingMsg")
        self._receiver = ntfrcv.NotificationReceiver(self.engine, self._on_notification)

    # -- configuration ---------------------------------------------------------------

    def update(self, devices: dict[tuple[str, str], Device]) -> None:
        """Accept notifications from exactly these devices, with their credentials."""
        config = self._config
        self._by_address = {_norm(d.address): d for d in devices.values()}
        communities = {d.community for d in devices.values()
                       if d.version == "2c" and d.community}
        for community, index in list(self._communities.items()):
            if community not in communities:
                config.delete_v1_system(self.engine, index)
                del self._communities[community]
        for community in communities - set(self._communities):
            index = f"c{len(self._communities)}-{time.monotonic_ns()}"
            config.add_v1_system(self.engine, index, community)
            self._communities[community] = index
        self._update_users([d for d in devices.values() if d.version == "3"])

    def _update_users(self, v3: list[Device]) -> None:
        from pysnmp.hlapi.v3arch.asyncio import auth
        from pysnmp.proto import rfc1902

        config = self._config
        auth_protocols = {
            "MD5": auth.usmHMACMD5AuthProtocol, "SHA": auth.usmHMACSHAAuthProtocol,
            "SHA224": auth.usmHMAC128SHA224AuthProtocol,
            "SHA256": auth.usmHMAC192SHA256AuthProtocol,
            "SHA384": auth.usmHMAC256SHA384AuthProtocol,
            "SHA512": auth.usmHMAC384SHA512AuthProtocol}
        priv_protocols = {
            "DES": auth.usmDESPrivProtocol, "AES": auth.usmAesCfb128Protocol,
            "AES192": auth.usmAesBlumenthalCfb192Protocol,
            "AES256": auth.usmAesBlumenthalCfb256Protocol}
        # a user per (name, sender engine id): pysnmp keys v3 users by both
        for user, engine_id in list(self._users):
            config.delete_v3_user(self.engine, user,
                                  securityEngineId=rfc1902.OctetString(hexValue=engine_id))
        self._users.clear()
        for user in self._local_users:
            config.delete_v3_user(self.engine, user)
        self._local_users.clear()
        seen: dict[str, tuple] = {}
        for d in v3:
            creds = (d.v3_auth_protocol, d.v3_auth_key, d.v3_priv_protocol, d.v3_priv_key)
            kwargs = dict(authProtocol=auth_protocols[d.v3_auth_protocol],
                          authKey=d.v3_auth_key,
                          privProtocol=priv_protocols[d.v3_priv_protocol],
                          privKey=d.v3_priv_key)
            if d.v3_engine_id and (d.v3_user, d.v3_engine_id) not in self._users:
                config.add_v3_user(self.engine, d.v3_user,
                                   securityEngineId=rfc1902.OctetString(hexValue=d.v3_engine_id),
                                   **kwargs)
                self._users.add((d.v3_user, d.v3_engine_id))
            # informs are sent to this engine's own id: one user entry per name, so only
            # when every device with that name shares the same keys
            if seen.setdefault(d.v3_user, creds) != creds:
                seen[d.v3_user] = None
        for user, creds in seen.items():
            if creds is None:
                log.warning("SNMPv3 user %r has different keys on different devices: its "
                            "v3 informs are not accepted (v3 traps are)", user)
                continue
            d = next(x for x in v3 if x.v3_user == user)
            config.add_v3_user(self.engine, user,
                               authProtocol=auth_protocols[d.v3_auth_protocol],
                               authKey=d.v3_auth_key,
                               privProtocol=priv_protocols[d.v3_priv_protocol],
                               privKey=d.v3_priv_key)
            self._local_users.add(user)
        missing = [d.key for d in v3 if not d.v3_engine_id]
        if missing:
            log.info("no engine_id in the inventory for %d SNMPv3 device(s) (e.g. %s): "
                     "their v3 traps cannot be authenticated", len(missing), missing[0])

    # -- observers and the notification callback -------------------------------------

    # One datagram is processed synchronously: the security module's observer fires
    # first (community, or USM user and engine id), then the dispatcher's (message
    # model, source address), then the notification callback.

    def _on_community(self, engine, point, variables, ctx) -> None:
        self._security = ("community", variables.get("communityName"))

    def _on_usm(self, engine, point, variables, ctx) -> None:
        self._security = ("usm", (variables.get("userName"),
                                  variables.get("securityEngineId")))

    def _on_message(self, engine, point, variables, ctx) -> None:
        self._context = {"model": variables.get("messageProcessingModel"),
                         "address": variables.get("transportAddress"),
                         "security": getattr(self, "_security", None)}
        self._security = None

    def _on_notification(self, engine, state_reference, context_engine_id, context_name,
                         varbinds, cb_ctx) -> None:
        ctx, self._context = self._context, {}
        try:
            address = engine.message_dispatcher.get_transport_info(state_reference)[1]
        except Exception:  # noqa: BLE001 - pysnmp keeps it only for a while
            address = ctx.get("address")
        source = _norm(str(address[0])) if address else ""
        device = self._by_address.get(source)
        if device is None:
            self.counts["unknown_source"] += 1
            log.debug("notification from unknown address %s dropped", source)
            return
        version = {0: "v1", 1: "v2c", 3: "v3"}.get(ctx.get("model"))
        if version is None or not self._credentials_match(device, version,
                                                          ctx.get("security")):
            self.counts["wrong_credentials"] += 1
            log.debug("notification from %s (%s) with credentials of another device dropped",
                      source, device.key)
            return
        try:
            event = self._event(device, source, version, varbinds)
        except Exception:  # noqa: BLE001 - one odd notification must not stop the rest
            self.counts["unparsable"] += 1
            log.exception("notification from %s could not be read", device.key)
            return
        self.counts["accepted"] += 1
        self.by_kind[event.kind] = self.by_kind.get(event.kind, 0) + 1
        self.publish(event)

    def _credentials_match(self, device: Device, version: str, security) -> bool:
        """The notification used the credentials of the device at its source address."""
        if security is None:
            return False
        kind, value = security
        if version in ("v1", "v2c"):
            return (kind == "community" and device.version == "2c" and value is not None
                    and bytes(value) == (device.community or "").encode())
        if kind != "usm" or device.version != "3":
            return False
        user, engine_id = value
        if user is None or bytes(user).decode("utf-8", "replace") != device.v3_user:
            return False
        engine_hex = bytes(engine_id).hex() if engine_id is not None else ""
        if engine_hex == (device.v3_engine_id or ""):
            return True  # a trap: sent under the device's own engine id
        # an inform: sent under this receiver's engine id, with the user's shared keys
        return (device.v3_user in self._local_users
                and engine_hex == bytes(self.engine.snmpEngineID).hex())

    def _event(self, device: Device, source: str, version: str, varbinds) -> TrapEvent:
        plain = [(".".join(map(str, name)), _plain(value)) for name, value in varbinds]
        trap_oid = next((str(v) for o, v in plain if o == SNMP_TRAP_OID), "")
        rest = [(o, v) for o, v in plain if o not in (SNMP_TRAP_OID, SYS_UPTIME_0)]
        mapped = self.mapper.map(trap_oid, rest, self.if_names(device.tenant_id, device.id))
        return TrapEvent(tenant_id=device.tenant_id, device_id=device.id, source_ip=source,
                         received_at=self.clock(), snmp_version=version, trap_oid=trap_oid,
                         kind=mapped.kind, if_index=mapped.if_index, pon=mapped.pon,
                         onu_id=mapped.onu_id,
                         varbinds={o: value_text(v) for o, v in plain})

    # -- counters --------------------------------------------------------------------

    def usm_counters(self) -> dict[str, int]:
        """pysnmp's USM drop counters (wrong keys, unknown users, ...)."""
        builder = self.engine.get_mib_builder()
        out = {}
        for name, symbol in USM_COUNTERS.items():
            try:
                (node,) = builder.import_symbols("__SNMP-USER-BASED-SM-MIB", symbol)
                out[name] = int(node.syntax)
            except Exception:  # noqa: BLE001 - a counter pysnmp does not keep
                out[name] = 0
        return out

    def bad_communities(self) -> int:
        try:
            (node,) = self.engine.get_mib_builder().import_symbols(
                "__SNMPv2-MIB", "snmpInBadCommunityNames")
            return int(node.syntax)
        except Exception:  # noqa: BLE001
            return 0

    def close(self) -> None:
        self._receiver.close(self.engine)
        dispatcher = self.engine.transport_dispatcher
        if dispatcher is not None:
            dispatcher.close_dispatcher()


def _norm(address: str) -> str:
    address = address.split("%", 1)[0]
    return address[7:] if address.startswith("::ffff:") else address


def _plain(value: Any) -> Any:
    """A pysnmp value as plain Python (bytes for strings, int, dotted OID text)."""
    tag_name = type(value).__name__
    if tag_name in ("OctetString", "Opaque", "DisplayString"):
        return value.asOctets()
    if tag_name == "ObjectIdentifier" or tag_name == "ObjectName":
        return ".".join(map(str, value))
    if tag_name == "IpAddress":
        return ".".join(map(str, value.asNumbers()))
    if tag_name in ("NoSuchObject", "NoSuchInstance", "EndOfMibView", "Null"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return value.prettyPrint()
