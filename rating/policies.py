"""Quota policies: thresholds of a plan's quota with an action each, decided per rated piece.

Pure: no I/O, no clock. A plan's policies (``80 % notify``, ``100 % throttle to 2M/2M``,
``120 % suspend``) become thresholds in bytes; ``rate_and_enforce`` rates a delta and
returns, with the rated pieces, the ``QuotaAction``s the pieces caused:

- a threshold fires once per billing cycle, when the cycle's billable bytes reach it
  (zero-rated bytes never count); several thresholds reached by one piece fire in order;
- the first usage of a new cycle, after a cycle whose throttle or suspend was still in
  force, fires a ``resume`` (source ``cycle``);
- a plan change (another plan id or quota) in a cycle whose throttle or suspend is in
  force fires a ``resume`` (source ``quota``) when no throttle or suspend threshold of the
  new plan is reached by the bytes used; the new plan's thresholds are armed afresh;
- pieces of a cycle older than the newest one the subscriber already used are late:
  they fire nothing (that cycle is over).

Every action carries a stable ``intent_id`` (see ``intent_id``): the same crossing,
replayed from the same state, has the same id, so the enforcer applies it once.

The check is O(1) per piece when nothing fires: the next threshold of the cycle is kept
with the cycle's state, and a subscriber who never reached one keeps no state at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

from rating.cycles import cycle_at

if TYPE_CHECKING:
    from rating.sessions import SessionDelta
    from rating.tariff import Plan, RatedPiece, SubscriberUsage, Tariff

NOTIFY = "notify"
THROTTLE = "throttle"
SUSPEND = "suspend"
RESUME = "resume"
POLICY_ACTIONS = (NOTIFY, THROTTLE, SUSPEND)
#: Actions that restrict service until a ``resume`` (or the cycle's end) lifts them.
ENFORCING = frozenset((THROTTLE, SUSPEND))
MAX_PCT = 1000


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """At ``at_pct`` percent of the plan's quota, do ``action`` (``rate`` for throttle)."""

    at_pct: int
    action: str  # notify | throttle | suspend
    rate: str | None = None  # rate profile for throttle, e.g. "2M/2M"

    def __post_init__(self) -> None:
        if type(self.at_pct) is not int or not 1 <= self.at_pct <= MAX_PCT:
            raise ValueError(f"at_pct must be an int in 1..{MAX_PCT}")
        if self.action not in POLICY_ACTIONS:
            raise ValueError(f"action must be one of {POLICY_ACTIONS}")
        if self.action == THROTTLE:
            if not isinstance(self.rate, str) or not self.rate:
                raise ValueError("a throttle needs a rate, e.g. '2M/2M'")
        elif self.rate is not None:
            raise ValueError(f"only a throttle has a rate, not a {self.action}")


class Threshold(NamedTuple):
    """A policy in bytes of one plan's quota (``Plan.thresholds``, sorted by ``bytes``)."""

    bytes: int
    at_pct: int
    action: str
    rate: str | None


def threshold_bytes(quota_bytes: int, at_pct: int) -> int:
    """The billable bytes at which ``at_pct`` % of the quota is reached: the least ``n``
    with ``n * 100 >= quota * at_pct``, and at least 1 (a zero quota is reached by the
    first billable byte, not by none)."""
    return max(1, -(-quota_bytes * at_pct // 100))


def thresholds(quota_bytes: int | None,
               policies: tuple[QuotaPolicy, ...]) -> tuple[Threshold, ...]:
    """A plan's policies as thresholds in bytes, in the order they are reached."""
    if quota_bytes is None or not policies:
        return ()
    return tuple(sorted(Threshold(threshold_bytes(quota_bytes, p.at_pct), p.at_pct, p.action,
                                  p.rate) for p in policies))


def with_implicit_throttle(policies: tuple[QuotaPolicy, ...],
                           throttle_rate: str | None) -> tuple[QuotaPolicy, ...]:
    """A fair-use plan (``after_quota: {throttle: R}``) throttles to ``R`` at 100 % unless
    its policies say what happens at 100 % themselves. Sorted by ``at_pct``."""
    if throttle_rate is not None and all(p.at_pct != 100 for p in policies):
        policies = (*policies, QuotaPolicy(100, THROTTLE, throttle_rate))
    return tuple(sorted(policies, key=lambda p: p.at_pct))


def intent_id(*parts: object) -> str:
    """Stable id of an action (24 hex chars): BLAKE2b (12-byte digest) of the parts as
    text, each length-prefixed and joined by ``|`` (``"4:acme|5:alice|10:2024-03-01|..."``),
    so no two different part lists share an id."""
    key = "|".join(f"{len(s)}:{s}" for s in map(str, parts))
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def threshold_intent_id(tenant_id: str, username: str, cycle_start: date, at_pct: int,
                        action: str, generation: int = 0) -> str:
    """``intent_id(tenant, username, cycle_start ISO, at_pct, action)``; after a plan
    change re-armed the cycle's thresholds, the generation (1, 2, ...) is appended."""
    if generation:
        return intent_id(tenant_id, username, cycle_start.isoformat(), at_pct, action,
                         generation)
    return intent_id(tenant_id, username, cycle_start.isoformat(), at_pct, action)


def cycle_resume_intent_id(tenant_id: str, username: str, cycle_start: date) -> str:
    """``intent_id(tenant, username, new cycle_start ISO, "resume")``."""
    return intent_id(tenant_id, username, cycle_start.isoformat(), RESUME)


def plan_change_resume_intent_id(tenant_id: str, username: str, cycle_start: date,
                                 generation: int) -> str:
    """``intent_id(tenant, username, cycle_start ISO, "resume", generation)``: one per
    plan change that lifted a throttle or suspend (generation 1, 2, ... in the cycle)."""
    return intent_id(tenant_id, username, cycle_start.isoformat(), RESUME, generation)


@dataclass(frozen=True, slots=True)
class QuotaAction:
    """An enforcement intent caused by rating (the flow publishes it as an ActionEvent)."""

    intent_id: str
    tenant_id: str
    username: str
    kind: str  # notify | throttle | suspend | resume
    rate: str | None  # throttle: the reduced rate; resume: the plan's normal rate (or None)
    source: str  # quota | cycle
    reason: str
    threshold_pct: int | None
    cycle_start: date
    cycle_end: date
    at: int  # unix s: end of the rated piece that caused it (event time)


def crossed(ths: tuple[Threshold, ...], used: int,
            fired: tuple[tuple[int, str], ...]) -> list[Threshold]:
    """The thresholds ``used`` billable bytes reach that have not fired yet, in order."""
    return [t for t in ths if t.bytes <= used and (t.at_pct, t.action) not in fired]


def _next_unfired(ths: tuple[Threshold, ...], fired: tuple[tuple[int, str], ...]) -> int | None:
    for t in ths:
        if (t.at_pct, t.action) not in fired:
            return t.bytes
    return None


class CycleQuota:
    """Quota state of one subscriber in one billing cycle (only once something fired).

    ``fired``: thresholds (at_pct, action) fired in the current generation; ``generation``
    grows when a plan change re-arms them; ``enforced``: a throttle or suspend fired and
    no resume lifted it since; ``next_bytes``: the lowest unfired threshold of the plan
    last seen (None: nothing left), so a piece below it costs one comparison.
    """

    __slots__ = ("plan_id", "quota_bytes", "generation", "fired", "enforced", "next_bytes",
                 "basis")

    def __init__(self, plan: Plan) -> None:
        self.plan_id = plan.plan_id
        self.quota_bytes = plan.quota_bytes
        self.generation = 0
        self.fired: tuple[tuple[int, str], ...] = ()
        self.enforced = False
        ths = plan.thresholds
        self.next_bytes: int | None = ths[0].bytes if ths else None
        # the Plan.thresholds next_bytes was computed from (not pickled: recomputed)
        self.basis: tuple[Threshold, ...] | None = ths

    def __getstate__(self):
        return (self.plan_id, self.quota_bytes, self.generation, self.fired, self.enforced,
                self.next_bytes)

    def __setstate__(self, state) -> None:
        (self.plan_id, self.quota_bytes, self.generation, self.fired, self.enforced,
         self.next_bytes) = state
        self.basis = None

    def __repr__(self) -> str:
        return (f"CycleQuota({self.plan_id!r}, quota={self.quota_bytes}, "
                f"gen={self.generation}, fired={self.fired}, enforced={self.enforced})")


NO_ACTIONS: tuple = ()


class _Context:
    """What every action of one rated delta shares (built only when one fires)."""

    __slots__ = ("tenant_id", "username", "tariff", "ends")

    def __init__(self, tenant_id: str, username: str, tariff: Tariff) -> None:
        self.tenant_id = tenant_id
        self.username = username
        self.tariff = tariff
        self.ends: dict[date, date] = {}

    def cycle_end(self, p: RatedPiece) -> date:
        end = self.ends.get(p.cycle_start)
        if end is None:
            t = self.tariff
            end = cycle_at(datetime.fromtimestamp(p.ts_start, timezone.utc),
                           t.cycle_anchor_day, t.timezone).end_date
            self.ends[p.cycle_start] = end
        return end

    def action(self, iid: str, kind: str, rate: str | None, source: str, reason: str,
               pct: int | None, p: RatedPiece) -> QuotaAction:
        return QuotaAction(iid, self.tenant_id, self.username, kind, rate, source, reason,
                           pct, p.cycle_start, self.cycle_end(p), p.ts)


def _sync_plan(rec: CycleQuota, plan: Plan, before: int, p: RatedPiece, ctx: _Context,
               out: list) -> None:
    """The plan's thresholds object changed (a catalog refresh, a restored snapshot or a
    plan change): on a plan change re-arm the thresholds and lift what no longer holds."""
    ths = plan.thresholds
    if rec.plan_id != plan.plan_id or rec.quota_bytes != plan.quota_bytes:
        old = f"{rec.plan_id} ({rec.quota_bytes} bytes)"
        if rec.fired:
            rec.generation += 1
            rec.fired = ()
        rec.plan_id, rec.quota_bytes = plan.plan_id, plan.quota_bytes
        if rec.enforced and not any(t.action in ENFORCING and t.bytes <= before
                                    for t in ths):
            rec.enforced = False
            quota = "unlimited" if plan.quota_bytes is None else f"{plan.quota_bytes} bytes"
            out.append(ctx.action(
                plan_change_resume_intent_id(ctx.tenant_id, ctx.username, p.cycle_start,
                                             rec.generation),
                RESUME, plan.rate_limit, "quota",
                f"plan change ({old} -> {plan.plan_id} ({quota}); {before} bytes used)",
                None, p))
    rec.basis = ths
    rec.next_bytes = _next_unfired(ths, rec.fired)


def _fire(rec: CycleQuota, plan: Plan, used: int, p: RatedPiece, ctx: _Context,
          out: list) -> None:
    fired = rec.fired
    for t in crossed(plan.thresholds, used, fired):
        fired += ((t.at_pct, t.action),)
        if t.action in ENFORCING:
            rec.enforced = True
        out.append(ctx.action(
            threshold_intent_id(ctx.tenant_id, ctx.username, p.cycle_start, t.at_pct,
                                t.action, rec.generation),
            t.action, t.rate, "quota",
            f"quota {t.at_pct}% reached ({used} of {plan.quota_bytes} bytes)", t.at_pct, p))
    rec.fired = fired
    rec.next_bytes = _next_unfired(plan.thresholds, fired)


def _prune(quota: dict, used: dict) -> None:
    """Keep the quota state of the cycles whose usage ``SubscriberUsage`` keeps."""
    for old in [c for c in quota if c not in used]:
        del quota[old]


def rate_and_enforce(usage: SubscriberUsage, delta: SessionDelta,
                     tariff: Tariff) -> tuple[list[RatedPiece], list[QuotaAction] | tuple]:
    """Rate ``delta`` (``usage.rate``) and decide the quota actions its pieces cause.

    The quota state lives in ``usage.quota`` (cycle start -> ``CycleQuota``; None until
    the subscriber first reaches a threshold). Returns ``(pieces, actions)``.
    """
    plan = tariff.plan
    quota = usage.quota
    if plan is None or (quota is None and not plan.thresholds):
        return usage.rate(delta, tariff), NO_ACTIONS
    used = usage.used
    latest = max(used) if used else None  # the newest cycle used before this delta
    pieces = usage.rate(delta, tariff)

    out: list[QuotaAction] = []
    ctx = None
    if len(pieces) == 1:
        starts = None
    else:  # billable bytes of each cycle before this delta
        starts = {}
        for p in pieces:
            c = p.cycle_start
            starts[c] = starts.get(c, used.get(c, 0)) - p.billable_bytes
    for p in pieces:
        c = p.cycle_start
        if latest is not None and c < latest:
            continue  # late: that cycle is over
        if c not in used:
            continue  # older than the cycles kept (a delta spanning many cycles)
        if starts is None:
            after = used[c]
            before = after - p.billable_bytes
        else:
            before = starts[c]
            after = starts[c] = before + p.billable_bytes

        rec = quota.get(c) if quota else None
        if rec is None:
            if quota:
                # The subscriber's first usage of a new cycle: lift what the last cycle
                # left in force.
                prev = quota[max(quota)]
                rec = quota[c] = CycleQuota(plan)
                _prune(quota, used)
                if prev.enforced:
                    ctx = ctx or _Context(delta.tenant_id, p.username, tariff)
                    out.append(ctx.action(
                        cycle_resume_intent_id(ctx.tenant_id, ctx.username, c),
                        RESUME, plan.rate_limit, "cycle", f"new billing cycle from {c}",
                        None, p))
            else:
                ths = plan.thresholds
                if not ths or after < ths[0].bytes:
                    continue  # the common case: below the plan's first threshold
                quota = usage.quota = {}
                rec = quota[c] = CycleQuota(plan)
        elif rec.basis is not plan.thresholds:
            ctx = ctx or _Context(delta.tenant_id, p.username, tariff)
            _sync_plan(rec, plan, before, p, ctx, out)
        nxt = rec.next_bytes
        if nxt is None or after < nxt:
            continue
        ctx = ctx or _Context(delta.tenant_id, p.username, tariff)
        _fire(rec, plan, after, p, ctx, out)
    return pieces, out
