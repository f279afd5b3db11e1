"""Response models of the API (``XBase`` shared fields, ``XPublic`` what clients see).

Byte counts are integers; money is a decimal string (never a float): ``charge`` is
rounded once to the currency's minor unit, ``charge_exact`` is the unrounded sum.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from portal_api.radius_replies import parse_rate

DecimalStr = Annotated[str, Field(pattern=r"^-?\d+(\.\d+)?$", examples=["1.50"])]


class ErrorPublic(BaseModel):
    """An error (401, 404, 503)."""

    detail: str


class UsageTotalsBase(BaseModel):
    """Usage amounts over a period."""

    upload_bytes: int = Field(description="from the subscriber (Acct-Input)")
    download_bytes: int = Field(description="to the subscriber (Acct-Output)")
    billable_bytes: int = Field(description="bytes that count toward the quota")
    zero_rated_bytes: int = Field(description="bytes not counted (off-peak at rate 0)")
    over_quota_bytes: int = Field(description="billable bytes past the quota")
    charge: DecimalStr = Field(description="usage charge, rounded once (half up) to the "
                                           "currency's minor unit")
    charge_exact: DecimalStr = Field(description="usage charge, unrounded")


class UsageBucketPublic(UsageTotalsBase):
    """One bucket of a usage series: ``[start, end)``."""

    start: datetime
    end: datetime


class UsagePublic(UsageTotalsBase):
    """A subscriber's usage over ``[from, to)``, optionally with a series."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    username: str
    currency: str
    from_: datetime = Field(alias="from")
    to: datetime
    granularity: Literal["hour", "day"] | None = None
    series: list[UsageBucketPublic] | None = Field(
        default=None,
        description="hour: UTC hours (from the hourly rollup) overlapping the window; "
                    "day: days in the tenant's time zone, exact sums over the window",
    )


class AfterQuotaPublic(BaseModel):
    """What happens past the quota: a per-GB overage price, or a throttle rate."""

    overage_per_gb: DecimalStr | None = None
    throttle: str | None = None


class CyclePublic(BaseModel):
    """The subscriber's current billing cycle and quota state."""

    username: str
    plan_id: str
    currency: str
    start: datetime = Field(description="cycle start (local midnight of the anchor day)")
    end: datetime = Field(description="cycle end (exclusive)")
    start_date: date
    end_date: date
    monthly_fee: DecimalStr
    quota_counts: Literal["download", "upload", "total"]
    quota_bytes: int | None = Field(description="null = unlimited")
    used_bytes: int = Field(description="billable bytes this cycle")
    remaining_bytes: int | None = Field(description="null when unlimited; never negative")
    over_quota_bytes: int
    overage_charge: DecimalStr = Field(description="rounded once to the minor unit")
    overage_charge_exact: DecimalStr
    after_quota: AfterQuotaPublic | None = Field(description="null when unlimited")


class SessionPublic(BaseModel):
    """One accounting session with its totals."""

    nas_id: str
    session_id: str
    username: str | None
    state: Literal["open", "closed", "stale"]
    close_reason: str | None
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None
    upload_bytes: int
    download_bytes: int
    framed_ip: str | None


class SessionPagePublic(BaseModel):
    """A page of sessions, newest first; pass ``next_cursor`` as ``cursor`` for more."""

    items: list[SessionPublic]
    next_cursor: str | None


class CheckPublic(BaseModel):
    """The result of one health check."""

    status: Literal["ok", "error", "not configured"]
    detail: str | None = None


class HealthPublic(BaseModel):
    """Overall health: ``ok`` only when every check is ok."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckPublic]


# --- enforcement ----------------------------------------------------------------------

class ActionCreate(BaseModel):
    """An operator's action on a subscriber."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["disconnect", "throttle", "suspend", "resume"]
    reason: str = Field(min_length=1, max_length=500,
                        description="why (recorded with the action and in the audit log)")
    rate: str | None = Field(default=None, max_length=40, examples=["2M/2M"],
                             description="throttle only (required): upload/download in "
                             "bit/s with k, M or G, e.g. 2M/2M or 512k/4M")

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("reason must not be blank")
        return v

    @field_validator("rate")
    @classmethod
    def _rate_profile(cls, v: str | None) -> str | None:
        return None if v is None else parse_rate(v, both=True).text

    @model_validator(mode="after")
    def _rate_with_throttle_only(self) -> "ActionCreate":
        if self.action == "throttle" and self.rate is None:
            raise ValueError("throttle needs a rate, e.g. 2M/2M")
        if self.action != "throttle" and self.rate is not None:
            raise ValueError(f"{self.action} takes no rate (only throttle does)")
        return self


class ActionAttemptPublic(BaseModel):
    """One CoA or Disconnect request to the NAS holding one of the subscriber's sessions,
    and what the NAS answered."""

    nas_id: str
    session_id: str
    request: Literal["coa", "disconnect"]
    state: Literal["sending", "ack", "nak", "timeout"]
    error_cause: int | None = Field(description="RFC 5176 Error-Cause of a NAK")
    attempts: int
    created_at: datetime = Field(description="when it was first sent")
    answered_at: datetime | None


class ActionPublic(BaseModel):
    """An enforcement action (intent) with each NAS's answer."""

    intent_id: str
    username: str
    kind: str = Field(examples=["throttle"],
                      description="notify, throttle, suspend, disconnect or resume")
    rate: str | None
    source: str = Field(examples=["operator"], description="quota, operator or cycle")
    reason: str
    threshold_pct: int | None
    cycle_start: date | None
    requested_by: str | None = Field(description="API key id, for operator actions "
                                                 "(not shown to customers)")
    at: datetime = Field(description="when it was requested (or the quota crossed)")
    state: Literal["pending", "done", "partial", "failed", "no_sessions"]
    created_at: datetime
    completed_at: datetime | None
    attempts: list[ActionAttemptPublic]


class ActionPagePublic(BaseModel):
    """A page of actions, newest first; pass ``next_cursor`` as ``cursor`` for more."""

    items: list[ActionPublic]
    next_cursor: str | None


class EnforcementPublic(BaseModel):
    """What is enforced on a subscriber now, why and since when, and the history."""

    username: str
    state: Literal["normal", "throttled", "suspended"]
    rate: str | None = Field(description="the throttle rate")
    reason: str | None
    source: str | None
    intent_id: str | None = Field(description="the action that set this state")
    since: datetime | None
    until: datetime | None = Field(description="when a cycle-bound state lifts by itself")
    history: list[ActionPublic] = Field(description="actions, newest first")
