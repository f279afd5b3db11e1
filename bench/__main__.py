"""Run every registered benchmark: ``python -m bench`` (``make bench``).

Each entry of ``BENCHES`` is a module with ``main(argv: list[str] | None) -> int``; it
runs with its default parameters. Run one with its own options via
``python -m bench.<name> --help``.
"""

from __future__ import annotations

import importlib
import sys

BENCHES = [
    "bench.collector",
    "bench.flow",
    "bench.latency",
    "bench.snmp_poller",
    "bench.detection_latency",
    "bench.onu_scale",
    "bench.enforce",
    "bench.session_snapshot",
    "bench.hot_path",
]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"=== {name}", flush=True)
        rc = importlib.import_module(name).main([])
        if rc:
            failed.append(f"{name} (exit {rc})")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
