"""Session-state snapshot cost: what the usage flow pays every epoch per NAS shard.

Builds ``rating.sessions.NasState`` with ``--sessions`` open sessions (Start and one
Interim each), then, per round (one 2 s epoch of event time), changes ``--changed`` of
them (an Interim-Update) and times the pickle the flow's snapshot makes (``pickle.dumps`` of the state, as
``pipelines.runtime.stateful_apply`` does). Compared in the same run with the first
snapshot of the same state, where every session is pickled (the cost of every snapshot
before sessions kept their pickles), and reports the restore time (flow start-up).

    .venv/bin/python -m bench.session_snapshot [--sessions 200000 --changed 4000 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time

from bench._common import machine_info, write_result
from pipelines.runtime import tune_gc
from rating.sessions import AcctRecord, NasState

T0 = 1_700_000_000


def _record(i: int, status: str, t: int, up: int, down: int) -> AcctRecord:
    return AcctRecord("bench", "nas1", f"S{i}", status, f"u{i}", t, up, down, 300,
                      t - T0 or None, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.session_snapshot", description=__doc__)
    ap.add_argument("--sessions", type=int, default=200_000)
    ap.add_argument("--changed", type=int, default=4_000,
                    help="sessions changed between two snapshots (~ records per epoch)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    state = NasState()
    for i in range(args.sessions):
        state.apply(_record(i, "Start", T0, 0, 0))
        state.apply(_record(i, "Interim-Update", T0 + 300, 1000 * i, 5000 * i))
    tune_gc()  # as the flow process does
    dump = lambda: pickle.dumps(state, pickle.HIGHEST_PROTOCOL)  # noqa: E731
    first_s, blob = _timed(dump)
    restore_s, _ = _timed(lambda: pickle.loads(blob))

    changed_s = []
    for r in range(args.rounds):
        t = T0 + 600 + 2 * r  # one epoch of event time: no session goes stale
        start = (r * args.changed) % args.sessions
        for i in range(start, start + args.changed):
            i %= args.sessions
            state.apply(_record(i, "Interim-Update", t, 2000 * i + r, 9000 * i + r))
        changed_s.append(_timed(dump)[0])
        print(f"  round {r + 1}: snapshot after {args.changed:,} changed sessions "
              f"{changed_s[-1] * 1e3:.1f} ms", flush=True)

    result = {
        "sessions": args.sessions,
        "changed_per_snapshot": args.changed,
        "rounds": args.rounds,
        "snapshot_bytes": len(blob),
        "snapshot_all_sessions_ms": round(first_s * 1e3, 1),
        "snapshot_after_changes_ms_median": round(statistics.median(changed_s) * 1e3, 1),
        "snapshot_after_changes_ms": [round(x * 1e3, 1) for x in changed_s],
        "ratio_all_to_changed": round(first_s / statistics.median(changed_s), 2),
        "restore_ms": round(restore_s * 1e3, 1),
        "machine": machine_info(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"result written to {write_result('session_snapshot', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
