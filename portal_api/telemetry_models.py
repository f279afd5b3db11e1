"""Response and request models of the telemetry endpoints (alerts, interfaces, PON ports,
ONU optics, a subscriber's line), and the optical limits they are judged against.

Optical powers are dBm, traffic is bit/s, utilization a fraction of the interface speed.
The limits and ``verdict`` are pure: data in, data out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Severity = Literal["critical", "major", "minor", "warning", "info"]
AlertState = Literal["open", "acknowledged", "cleared"]
Verdict = Literal["ok", "low", "high", "no_reading"]

# Most severe first: a minimum severity admits itself and everything before it.
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning", "info")

_IF_OPER = {1: "up", 2: "down", 3: "testing", 4: "unknown", 5: "dormant", 6: "notPresent",
            7: "lowerLayerDown"}
_IF_ADMIN = {1: "up", 2: "down", 3: "testing"}


def at_least(severity: str) -> list[str]:
    """The severities at least as severe as ``severity``."""
    return list(SEVERITIES[:SEVERITIES.index(severity) + 1])


def if_oper_status(code: int | None) -> str | None:
    """IF-MIB ifOperStatus as its name (``up``, ``down``, ...)."""
    return None if code is None else _IF_OPER.get(code, str(code))


def if_admin_status(code: int | None) -> str | None:
    """IF-MIB ifAdminStatus as its name."""
    return None if code is None else _IF_ADMIN.get(code, str(code))


@dataclass(frozen=True)
class Limit:
    """An acceptable power range ``[min_dbm, max_dbm]``."""

    min_dbm: float
    max_dbm: float


# GPON class B+ (ITU-T G.984.2): receive sensitivity and overload at the ONU and at the
# OLT, and the ONU's launch power.
ONU_RX = Limit(-27.0, -8.0)
OLT_RX = Limit(-28.0, -8.0)
ONU_TX = Limit(0.5, 5.0)


def verdict(dbm: float | None, limit: Limit) -> Verdict:
    """``ok`` inside the limits (inclusive), ``low`` / ``high`` outside, ``no_reading``
    without a value."""
    if dbm is None:
        return "no_reading"
    if dbm < limit.min_dbm:
        return "low"
    if dbm > limit.max_dbm:
        return "high"
    return "ok"


def onu_ref(olt_id: str, pon: str, onu_id: str) -> str:
    """The ONU's id in API paths: ``<olt>:<pon>:<onu_id>`` (URL-encode it in a path)."""
    return f"{olt_id}:{pon}:{onu_id}"


def parse_onu_ref(ref: str) -> tuple[str, str, str] | None:
    """(olt, pon, onu_id) from ``onu_ref``'s form; None when it is not one. The OLT is
    up to the first ``:``, the ONU id after the last one, the PON (which may contain
    ``/`` or ``:``) in between."""
    olt, sep, rest = ref.partition(":")
    pon, sep2, onu_id = rest.rpartition(":")
    if not (sep and sep2 and olt and pon and onu_id):
        return None
    return olt, pon, onu_id


def onu_object(pon: str, onu_id: str) -> str:
    """How an alert names an ONU in its ``object`` (with the OLT as ``device_id``)."""
    return f"{pon}/{onu_id}"


# --- alerts -----------------------------------------------------------------------------


class AlertPublic(BaseModel):
    """One alert: an episode of a condition, with why it was raised and whom it affects."""

    alert_id: str
    key: str = Field(description="stable deduplication key of the condition, e.g. "
                     "`onu_low_rx:olt-1/gpon_1/1/3/7`")
    kind: str = Field(examples=["onu_low_rx"])
    severity: Severity
    state: AlertState
    device_id: str | None = Field(description="the device it concerns (for ONUs and PON "
                                  "ports: the OLT)")
    object: str | None = Field(description="interface, PON port (`gpon_1/1/3`) or ONU "
                               "(`<pon>/<onu_id>`) on the device")
    title: str
    explanation: str = Field(description="what was detected, in words")
    probable_cause: str | None
    affected_subscribers: list[str] = Field(description="usernames served through it "
                                            "(customers see only themselves)")
    suppressed: bool = Field(description="explained by another alert (see suppressed_by), "
                             "e.g. one ONU of a failed PON port")
    suppressed_by: str | None = Field(description="alert_id of the alert that explains it")
    details: dict[str, Any] = Field(description="detector specifics (values, thresholds)")
    opened_at: datetime
    last_seen_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None = Field(description="API key id that acknowledged it (not "
                                        "shown to customers)")
    cleared_at: datetime | None


class AlertHistoryPublic(BaseModel):
    """One state change of an alert."""

    at: datetime
    state: str = Field(examples=["acknowledged"])
    note: str | None
    by_key: str | None = Field(description="API key id, for changes made through the API")


class AlertDetailPublic(AlertPublic):
    """An alert with its state changes, oldest first."""

    history: list[AlertHistoryPublic]


class AlertPagePublic(BaseModel):
    """A page of alerts, newest first; pass ``next_cursor`` as ``cursor`` for more."""

    items: list[AlertPublic]
    next_cursor: str | None


class AlertAckCreate(BaseModel):
    """An acknowledgement of an open alert."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=1000,
                             description="why / who is on it (history and audit log)")

    @field_validator("note")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return (v.strip() or None) if v is not None else None


# --- interfaces -----------------------------------------------------------------------


class IfSamplePublic(BaseModel):
    """One polled sample of an interface (``granularity=raw``)."""

    ts: datetime
    oper_status: int | None
    in_bps: float | None = Field(description="null across a counter discontinuity")
    out_bps: float | None
    in_util: float | None = Field(description="fraction of the interface speed")
    out_util: float | None
    discontinuity: bool = Field(description="the counters reset or wrapped: no rate")


class IfHourPublic(BaseModel):
    """One UTC hour of an interface's traffic (``granularity=hour``)."""

    hour: datetime
    in_bps_avg: float | None
    out_bps_avg: float | None
    in_bps_max: float | None
    out_bps_max: float | None
    samples: int


class InterfacePublic(BaseModel):
    """An interface as last polled, with its traffic over the window."""

    if_index: int
    name: str | None
    alias: str | None
    oper_status: str | None = Field(description="IF-MIB ifOperStatus: up, down, testing, "
                                    "unknown, dormant, notPresent, lowerLayerDown")
    admin_status: str | None = Field(description="IF-MIB ifAdminStatus: up, down, testing")
    high_speed_mbps: int | None
    last_change: datetime | None
    updated_at: datetime
    samples: list[IfSamplePublic] | None = Field(description="granularity raw, oldest first")
    hours: list[IfHourPublic] | None = Field(description="granularity hour, oldest first")


class DeviceInterfacesPublic(BaseModel):
    """A device's interfaces with their traffic over ``[from, to)``."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    device_id: str
    kind: str
    reachable: bool | None = Field(description="as last seen by the poller; null: unknown")
    reachability_changed_at: datetime | None
    from_: datetime = Field(alias="from")
    to: datetime
    granularity: Literal["raw", "hour"]
    interfaces: list[InterfacePublic]


# --- ONUs and PON ports -----------------------------------------------------------------


class OpticalLimitsPublic(BaseModel):
    """The power ranges readings are judged against (GPON class B+), dBm."""

    onu_rx_min_dbm: float = ONU_RX.min_dbm
    onu_rx_max_dbm: float = ONU_RX.max_dbm
    olt_rx_min_dbm: float = OLT_RX.min_dbm
    olt_rx_max_dbm: float = OLT_RX.max_dbm
    onu_tx_min_dbm: float = ONU_TX.min_dbm
    onu_tx_max_dbm: float = ONU_TX.max_dbm


class PonPortPublic(BaseModel):
    """One PON port of an OLT: its ONUs and their light levels.

    Light statistics cover ONUs not known to be offline that have a reading.
    """

    pon: str
    onus_total: int
    onus_online: int
    onus_offline: int
    onus_unknown: int = Field(description="ONUs whose state the OLT did not report")
    onu_rx_dbm_min: float | None
    onu_rx_dbm_avg: float | None
    olt_rx_dbm_min: float | None
    olt_rx_dbm_avg: float | None
    onus_out_of_limits: int = Field(description="ONUs with ONU Rx or OLT Rx outside the "
                                    "class B+ limits")
    open_alerts: int = Field(description="open or acknowledged alerts on the PON port or "
                             "one of its ONUs")


class OltPonPortsPublic(BaseModel):
    """An OLT's PON ports."""

    olt_id: str
    reachable: bool | None
    limits: OpticalLimitsPublic
    pon_ports: list[PonPortPublic]


class OnuPublic(BaseModel):
    """An ONU as last read from its OLT."""

    id: str = Field(description="`<olt>:<pon>:<onu_id>`, the id in `/v1/onus/{id}` paths",
                    examples=["olt-1:gpon_1/1/3:7"])
    olt_id: str
    pon: str
    onu_id: str
    serial: str | None
    online: bool | None
    last_seen: datetime


class OpticalSamplePublic(BaseModel):
    """One optical reading of an ONU (``granularity=raw``)."""

    ts: datetime
    online: bool | None
    onu_rx_dbm: float | None
    onu_tx_dbm: float | None
    olt_rx_dbm: float | None
    temperature_c: float | None
    voltage_v: float | None
    bias_ma: float | None


class OpticalHourPublic(BaseModel):
    """One UTC hour of an ONU's optics (``granularity=hour``)."""

    hour: datetime
    onu_rx_avg: float | None
    onu_rx_min: float | None
    olt_rx_avg: float | None
    olt_rx_min: float | None
    samples: int
    offline_samples: int


class OnuOpticalPublic(BaseModel):
    """An ONU's optical series over ``[from, to)`` with the limits."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    onu: OnuPublic
    limits: OpticalLimitsPublic
    from_: datetime = Field(alias="from")
    to: datetime
    granularity: Literal["raw", "hour"]
    samples: list[OpticalSamplePublic] | None = Field(description="granularity raw, "
                                                      "oldest first")
    hours: list[OpticalHourPublic] | None = Field(description="granularity hour, oldest "
                                                  "first")


# --- a subscriber's line ----------------------------------------------------------------


class LightLevelPublic(BaseModel):
    """One current power reading against its limits."""

    dbm: float | None = Field(description="null: no current reading (ONU offline or not "
                              "reported)")
    min_dbm: float
    max_dbm: float
    verdict: Verdict


class OnuLinkPublic(BaseModel):
    """How the subscriber is tied to an ONU in the inventory."""

    olt_id: str
    serial: str | None
    pon: str | None
    onu_id: str | None


class LinePublic(BaseModel):
    """A subscriber's fibre line: the ONU, its light levels against the limits, and the
    open alerts that affect the subscriber."""

    username: str
    link: OnuLinkPublic | None = Field(description="null: no ONU is linked")
    onu: OnuPublic | None = Field(description="null: the linked ONU was not seen on its OLT")
    onu_rx: LightLevelPublic | None
    olt_rx: LightLevelPublic | None
    onu_tx: LightLevelPublic | None
    baseline_rx_dbm: float | None = Field(description="the ONU's own long-run Rx level")
    drift_db: float | None = Field(description="current ONU Rx minus the baseline "
                                   "(negative: weaker than usual)")
    alerts: list[AlertPublic] = Field(description="open or acknowledged alerts on the ONU, "
                                      "its PON port, or naming the subscriber; newest first")
