"""Usage flow hot path, stage by stage: µs of CPU per event in each pure step.

The end-to-end benchmark (``bench.flow``) swings with the machine; this one times the
flow's own Python per stage, with no Kafka, PostgreSQL or Bytewax, on the same load
shape (``--sessions`` sessions over 4 NAS, a Start and ``--interims`` Interim-Updates
each, an overage plan with an off-peak window), with the flow's GC settings. Each stage
runs over all events ``--rounds`` times; the minimum is reported (the least disturbed).

    .venv/bin/python -m bench.hot_path [--sessions 4000 --interims 11 --rounds 9]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import time as dtime
from decimal import Decimal
from itertools import islice

from bench._common import machine_info, write_result
from bench.flow import load_events
from pipelines.runtime import tune_gc
from pipelines.sinks import _rated_line, _session_line
from pipelines.usage import _decode_acct, rated_kv, record_from_event
from rating.sessions import NasState, SessionDelta
from rating.shards import SubscriberShard
from rating.tariff import OffPeakWindow, Plan, Tariff

T0 = 1_790_000_000


def load(sessions: int, interims: int) -> list[bytes]:
    """``radius.acct`` values of ``bench.flow``'s load without the Stops: the Start and
    ``interims`` Interim-Updates of every session, interleaved by time."""
    events = islice(load_events(sessions, interims, T0), sessions * (interims + 1))
    return [json.dumps(ev).encode() for ev in events]


def tariff() -> Tariff:
    plan = Plan(tenant_id="bench", plan_id="p", monthly_fee=Decimal("30"),
                quota_bytes=50 * 10**9, quota_counts="total", overage_per_gb=Decimal("1.5"),
                throttle_rate=None, off_peak=(OffPeakWindow(dtime(0), dtime(6), Decimal("0")),),
                quota_policies=())
    return Tariff(plan=plan, timezone="Europe/Berlin", currency="EUR", cycle_anchor_day=1)


def timed(rounds: int, n: int, fn) -> float:
    """Minimum over ``rounds`` of ``fn()``'s time, in µs per item of ``n``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    ap.add_argument("--sessions", type=int, default=4000)
    ap.add_argument("--interims", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    tune_gc()
    values = load(args.sessions, args.interims)
    events = [_decode_acct(v) for v in values]
    records = [record_from_event(e) for e in events]

    def sessions() -> list:
        states = {f"nas{i}": NasState() for i in range(4)}
        out: list = []
        for r in records:
            out.extend(states[r.nas_id].apply(r))
        return out

    outs = sessions()
    deltas = [o for o in outs if type(o) is SessionDelta]
    snapshots = [o for o in outs if type(o) is not SessionDelta]
    tf = tariff()

    def rate() -> list:
        shard, out = SubscriberShard(), []
        for d in deltas:
            out.extend(shard.rate(d, tf)[0])
        return out

    pieces = rate()
    r, n = args.rounds, len(values)
    stages = {
        "contract validation": timed(r, n, lambda: [_decode_acct(v) for v in values]),
        "record from event": timed(r, n, lambda: [record_from_event(e) for e in events]),
        "session state machine": timed(r, n, sessions),
        "rating": timed(r, n, rate),
        "usage.rated message": timed(r, n, lambda: [rated_kv(p) for p in pieces]),
        "rated COPY line": timed(r, n, lambda: [_rated_line(p) for p in pieces]),
        "session COPY line": timed(r, n, lambda: [_session_line(s) for s in snapshots]),
    }
    for name, us in stages.items():
        print(f"  {name:22s} {us:6.2f} µs/event")
    total = sum(stages.values())
    print(f"  {'total':22s} {total:6.2f} µs/event ({len(values)} events, {len(deltas)} "
          f"deltas, {len(pieces)} pieces, {len(snapshots)} session rows)")
    result = {"events": len(values), "deltas": len(deltas), "pieces": len(pieces),
              "session_rows": len(snapshots), "rounds": r,
              "us_per_event": {k: round(v, 3) for k, v in stages.items()},
              "us_per_event_total": round(total, 3), "machine": machine_info()}
    print(f"result written to {write_result('hot_path', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
