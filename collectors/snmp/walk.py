"""Walking several table columns at once with GETBULK.

Each request carries one varbind per column still being walked (its last OID), so one
response returns up to ``max-repetitions`` rows of every column; a column is done at the
first OID outside it (or endOfMibView). Columns of different lengths are fine: each
advances on its own. An agent that answers ``tooBig`` gets half the repetitions (down to
1); an agent that sends OIDs that do not increase has that column stopped, never looped.
With a ``varbind_budget`` instead, each request asks for ``budget // columns left``
repetitions (columns that ended leave room to the others) and tooBig halves the budget.

The transport is a coroutine ``bulk(oids, non_repeaters, max_repetitions)`` returning
``(error_status, error_index, varbinds)``, so the same walk runs over the v2c codec and
over pysnmp's SNMPv3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from collectors.snmp.ber import (END_OF_MIB_VIEW, ERROR_STATUS, TOO_BIG, Exceptional,
                                 decode_subids)

Varbinds = list[tuple[bytes, object]]
Bulk = Callable[[list[bytes], int, int], Awaitable[tuple[int, int, Varbinds]]]

MAX_REQUESTS_PER_WALK = 5000  # 5000 x 25 rows: far beyond any real interface table


_KINDS = {"timeout": "timeout", "authentication failure": "auth"}


class SnmpError(Exception):
    """A request or walk that failed; ``reason`` is short and safe to publish
    (``timeout``, ``authentication failure``, ``agent error: genErr``, ...).

    ``kind`` classifies it: ``timeout``, ``auth`` (the device refused our credentials),
    ``error-status`` (the agent answered with an error status, then in ``status``) or
    ``protocol`` (anything else: malformed, looping or empty answers, local errors)."""

    def __init__(self, reason: str, kind: str | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind or _KINDS.get(reason, "protocol")
        self.status = status


@dataclass
class WalkResult:
    scalars: list[object]
    columns: list[Varbinds]
    requests: int = 0
    varbinds: int = 0
    max_repetitions: int = 0  # what the agent accepted (less after tooBig)
    stopped_columns: int = 0  # columns cut short because OIDs did not increase


async def walk(bulk: Bulk, columns: list[bytes], max_repetitions: int,
               scalars: list[bytes] = (), varbind_budget: int | None = None) -> WalkResult:
    """Walk ``columns`` (encoded OIDs) in parallel; ``scalars`` ride along as
    non-repeaters of the first request (GETNEXT semantics: ask for the object's OID
    without ``.0``). ``varbind_budget``: repetitions per request follow the columns
    still walked (see the module's doc) instead of staying ``max_repetitions``."""
    result = WalkResult(scalars=[None] * len(scalars), columns=[[] for _ in columns],
                        max_repetitions=max_repetitions)
    cursor = list(columns)
    active = list(range(len(columns)))
    pending_scalars = list(scalars)
    reps = max(1, max_repetitions)
    while active or pending_scalars:
        if result.requests >= MAX_REQUESTS_PER_WALK:
            raise SnmpError("agent error: walk did not end")
        if varbind_budget and active:
            reps = max(1, varbind_budget // len(active))
        n_scalars = len(pending_scalars)
        status, _index, varbinds = await bulk(
            pending_scalars + [cursor[i] for i in active], n_scalars, reps if active else 0)
        result.requests += 1
        if status == TOO_BIG and reps > 1:
            reps = max(1, reps // 2)
            if varbind_budget:
                varbind_budget = max(1, varbind_budget // 2)
                reps = max(1, varbind_budget // len(active))
            result.max_repetitions = reps
            continue
        if status:
            raise SnmpError(f"agent error: {ERROR_STATUS.get(status, status)}",
                            kind="error-status", status=status)
        if len(varbinds) < n_scalars:
            raise SnmpError("agent error: short response")
        result.varbinds += len(varbinds)
        for j in range(n_scalars):
            oid, value = varbinds[j]
            if oid.startswith(pending_scalars[j]) and not isinstance(value, Exceptional):
                result.scalars[j] = value
        pending_scalars = []
        if not active:
            break
        k = len(active)
        before = [cursor[i] for i in active]
        done = [False] * k
        got = [0] * k
        outs = [result.columns[i] for i in active]
        prefixes = [columns[i] for i in active]
        slot = 0
        for oid, value in varbinds[n_scalars:] if n_scalars else varbinds:
            if not done[slot]:
                if value is END_OF_MIB_VIEW or not oid.startswith(prefixes[slot]):
                    done[slot] = True
                else:
                    outs[slot].append((oid, value))
                    got[slot] += 1
            slot += 1
            if slot == k:
                slot = 0
        progressed = False
        still = []
        for slot, i in enumerate(active):
            if got[slot]:
                last = outs[slot][-1][0]
                if decode_subids(last) <= decode_subids(before[slot]):
                    # the agent went backwards: drop this response's rows, stop here
                    del outs[slot][-got[slot]:]
                    result.stopped_columns += 1
                    progressed = True
                    continue
                cursor[i] = last
                progressed = True
            if done[slot]:
                progressed = True
                continue
            still.append(i)
        if not progressed:
            raise SnmpError("agent error: empty response")
        active = still
    return result
