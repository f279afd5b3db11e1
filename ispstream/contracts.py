"""Event contracts: one versioned pydantic model per topic, serialized as JSON.

The JSON Schema of each model is published under ``docs/schemas/`` (regenerate with
``ispstream schemas``) so other systems can consume the topics. A consumer must accept
unknown fields (forward compatibility) and reject a different major ``v``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AcctStatus = Literal["Start", "Interim-Update", "Stop", "Accounting-On", "Accounting-Off"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AcctEvent(_Event):
    """One RADIUS Accounting-Request as the collector received it (topic ``radius.acct``).

    Counters are passed through raw (octets and gigawords separately); the usage flow
    computes 64-bit totals. ``received_at`` is the collector's clock when the packet
    arrived; event time is derived downstream from ``event_timestamp`` or
    ``received_at - delay_time``.
    """

    v: Literal[1] = 1
    tenant_id: str
    nas_id: str = Field(description="inventory name of the NAS the packet came from")
    nas_ip: str = Field(description="source IP address the packet came from")
    status: AcctStatus
    session_id: str = Field(description="Acct-Session-Id")
    username: str | None = None
    received_at: float = Field(description="unix seconds, collector clock")
    event_timestamp: int | None = Field(default=None, description="Event-Timestamp, unix s")
    delay_time: int = Field(default=0, ge=0, description="Acct-Delay-Time, seconds")
    input_octets: int | None = Field(default=None, ge=0, lt=2**32)
    input_gigawords: int | None = Field(default=None, ge=0, lt=2**32)
    output_octets: int | None = Field(default=None, ge=0, lt=2**32)
    output_gigawords: int | None = Field(default=None, ge=0, lt=2**32)
    input_packets: int | None = None
    output_packets: int | None = None
    session_time: int | None = None
    interim_interval: int | None = Field(default=None, description="Acct-Interim-Interval")
    terminate_cause: str | None = None
    framed_ip: str | None = None
    nas_identifier: str | None = None
    nas_port_id: str | None = None
    calling_station_id: str | None = None

    def key(self) -> str:
        """Kafka key: ``tenant/nas/acct-session-id`` keeps one session's records in order."""
        return f"{self.tenant_id}/{self.nas_id}/{self.session_id}"


class RatedUsage(_Event):
    """One rated piece of a session's usage (topic ``usage.rated``, keyed by subscriber).

    A counter delta is split into pieces at tariff edges (off-peak windows, cycle start);
    ``(tenant_id, record_id, piece)`` identifies a piece for ever, so replays upsert the
    same rows. ``charge`` is exact (not rounded); rounding happens once per invoice line.
    """

    v: Literal[1] = 1
    tenant_id: str
    username: str
    nas_id: str
    session_id: str
    record_id: str
    piece: int
    ts_start: int = Field(description="unix s, start of the piece's time span")
    ts: int = Field(description="unix s, end of the piece's time span (the row's time)")
    plan_id: str | None
    cycle_start: str = Field(description="ISO date the billing cycle started")
    upload_bytes: int
    download_bytes: int
    billable_bytes: int
    zero_rated_bytes: int
    over_quota_bytes: int
    charge: Decimal
    currency: str
    rate_multiplier: Decimal
    flags: list[str] = Field(default_factory=list)


class DeadLetter(_Event):
    """A record that could not be processed (topic ``deadletter``), with the reason."""

    v: Literal[1] = 1
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    value: str = Field(description="the original bytes, decoded as UTF-8 with replacement")
    reason: str
    stage: str = Field(description="the process and step that rejected it")
    at: float


ActionKind = Literal["notify", "throttle", "suspend", "disconnect", "resume"]


class ActionEvent(_Event):
    """An enforcement intent for one subscriber (topic ``actions``, keyed tenant/username).

    ``intent_id`` is stable: the same crossing, replayed, carries the same id, so the
    enforcer never applies it twice. Quota actions: a hash of tenant, subscriber, cycle
    start, threshold and kind. Operator actions: a new id per request.
    """

    v: Literal[1] = 1
    intent_id: str
    tenant_id: str
    username: str
    kind: ActionKind
    rate: str | None = Field(default=None, description="rate profile for throttle, e.g. 2M/2M")
    source: Literal["quota", "operator", "cycle"]
    reason: str
    threshold_pct: int | None = None
    cycle_start: str | None = Field(default=None, description="ISO date of the cycle")
    cycle_end: str | None = Field(default=None, description="ISO date the cycle ends")
    requested_by: str | None = Field(default=None, description="API key id (operator)")
    at: float = Field(description="unix s: event time of the crossing, or request time")


class ActionResult(_Event):
    """What a NAS answered to one CoA/Disconnect attempt (topic ``actions.results``)."""

    v: Literal[1] = 1
    intent_id: str
    tenant_id: str
    username: str
    nas_id: str
    session_id: str
    request: Literal["coa", "disconnect"]
    outcome: Literal["ack", "nak", "timeout", "skipped"]
    error_cause: int | None = None
    attempts: int
    at: float


class IfRow(_Event):
    """One interface as read in one poll (IF-MIB / ifXTable; counters are 64-bit raw)."""

    if_index: int
    name: str | None = Field(default=None, description="ifName (else ifDescr)")
    alias: str | None = Field(default=None, description="ifAlias")
    oper_status: int | None = Field(default=None, description="ifOperStatus: 1 up, 2 down, ...")
    admin_status: int | None = None
    high_speed_mbps: int | None = Field(default=None, description="ifHighSpeed")
    in_octets: int | None = Field(default=None, description="ifHCInOctets")
    out_octets: int | None = Field(default=None, description="ifHCOutOctets")
    in_ucast_pkts: int | None = None
    out_ucast_pkts: int | None = None


class IfStatsPoll(_Event):
    """One poll of one device's interfaces (topic ``snmp.ifstats``, keyed tenant/device)."""

    v: Literal[1] = 1
    tenant_id: str
    device_id: str
    at: float = Field(description="unix s when the poll's responses arrived (poller clock)")
    sys_uptime_cs: int | None = Field(default=None, description="sysUpTime, centiseconds")
    interfaces: list[IfRow]


class TrapEvent(_Event):
    """One SNMP trap or inform from a known device (topic ``snmp.traps``, keyed by device)."""

    v: Literal[1] = 1
    tenant_id: str
    device_id: str
    source_ip: str
    received_at: float
    snmp_version: Literal["v1", "v2c", "v3"]
    trap_oid: str
    kind: Literal["link_down", "link_up", "onu_los", "onu_dying_gasp", "onu_up", "cold_start",
                  "warm_start", "other"]
    if_index: int | None = None
    pon: str | None = Field(default=None, description="PON port the ONU alarm concerns")
    onu_id: str | None = Field(default=None, description="ONU id on the PON, or serial")
    varbinds: dict[str, str] = Field(default_factory=dict, description="OID -> value text")


class OnuReading(_Event):
    """One ONU's optical readings; None where the OLT has no (valid) reading."""

    pon: str = Field(description="PON port name as the OLT calls it, e.g. gpon_1/1/3")
    onu_id: str = Field(description="ONU id on that PON (or its serial where that is the index)")
    serial: str | None = None
    online: bool | None = None
    onu_rx_dbm: float | None = None
    onu_tx_dbm: float | None = None
    olt_rx_dbm: float | None = Field(default=None, description="the OLT's receive power from it")
    temperature_c: float | None = None
    voltage_v: float | None = None
    bias_ma: float | None = None
    distance_m: int | None = None


class OnuOpticalPoll(_Event):
    """One poll of one OLT's ONU optics (topic ``onu.optical``, keyed tenant/olt)."""

    v: Literal[1] = 1
    tenant_id: str
    olt_id: str
    profile: str = Field(description="vendor profile that decoded it")
    at: float
    onus: list[OnuReading]


class DeviceStatus(_Event):
    """A change of a device's SNMP reachability (topic ``device.status``)."""

    v: Literal[1] = 1
    tenant_id: str
    device_id: str
    at: float
    reachable: bool
    reason: str = Field(description="e.g. timeout, authentication failure, recovered")
    consecutive_failures: int = 0


class AlertEvent(_Event):
    """A change of an alert (topic ``alerts``, keyed tenant/alert key)."""

    v: Literal[1] = 1
    tenant_id: str
    alert_id: str
    key: str = Field(description="stable dedup key, e.g. onu_low_rx:olt-1/gpon_1/1/3/7")
    kind: str
    severity: Literal["critical", "major", "minor", "warning", "info"]
    state: Literal["open", "acknowledged", "cleared"]
    device_id: str | None = None
    object: str | None = Field(default=None, description="interface, PON port or ONU")
    title: str
    explanation: str
    probable_cause: str | None = None
    affected_subscribers: list[str] = Field(default_factory=list)
    suppressed_by: str | None = Field(default=None, description="alert id that explains it")
    opened_at: float
    changed_at: float


SCHEMAS: dict[str, type[BaseModel]] = {
    "radius.acct": AcctEvent,
    "usage.rated": RatedUsage,
    "deadletter": DeadLetter,
    "actions": ActionEvent,
    "actions.results": ActionResult,
    "snmp.ifstats": IfStatsPoll,
    "snmp.traps": TrapEvent,
    "onu.optical": OnuOpticalPoll,
    "device.status": DeviceStatus,
    "alerts": AlertEvent,
}
