"""Poll one OLT once with a profile and show what it decodes, and what that cost.

For trying a profile on a device (or a recording served by snmpsim) before adding it to
the inventory, and for measuring the poller's CPU per poll::

    python -m collectors.onu.probe 127.0.0.1:1161 --community onu-axos_e7-2 \\
        --profile calix-axos --repeat 20

It prints one line per ONU (``--quiet``: only the summary) and the CPU time of the
poll in this process (walk + decode + the JSON message), per poll and per 128 ONUs.
SNMPv3: ``--v3-user U --auth SHA --auth-key K --priv AES --priv-key K``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from collectors.onu.profile import DecodeStats, decode, load_profiles
from collectors.onu.snmp import SnmpClient, SnmpError
from collectors.snmp.devices import Device
from ispstream.contracts import OnuOpticalPoll


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m collectors.onu.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", help="HOST or HOST:PORT (default port 161)")
    p.add_argument("--profile", required=True)
    p.add_argument("--community", default="public")
    p.add_argument("--v3-user")
    p.add_argument("--auth", choices=["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"])
    p.add_argument("--auth-key")
    p.add_argument("--priv", choices=["DES", "AES", "AES192", "AES256"])
    p.add_argument("--priv-key")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--max-inflight", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="polls to time (default 1)")
    p.add_argument("--quiet", action="store_true", help="summary only")
    return p.parse_args(argv)


async def _run(args) -> int:
    profiles = load_profiles()
    if args.profile not in profiles:
        print(f"unknown profile {args.profile!r}; known: {', '.join(sorted(profiles))}",
              file=sys.stderr)
        return 2
    profile = profiles[args.profile]
    host, _, port = args.address.rpartition(":") if ":" in args.address else (args.address,
                                                                              "", "161")
    device = Device("probe", args.address, "olt", host.strip("[]"), int(port),
                    "3" if args.v3_user else "2c", community=args.community,
                    v3_user=args.v3_user, v3_auth_protocol=args.auth,
                    v3_auth_key=args.auth_key, v3_priv_protocol=args.priv,
                    v3_priv_key=args.priv_key, timeout_s=args.timeout, retries=args.retries,
                    max_inflight=args.max_inflight, vendor_profile=profile.name)
    client = SnmpClient()
    session = client.session(device)
    cpu, wall = [], []
    try:
        for _ in range(max(1, args.repeat)):
            c0, w0 = time.process_time(), time.perf_counter()
            walks = await session.walk_columns(profile.columns())
            stats = DecodeStats()
            onus = decode(profile, walks, stats)
            message = OnuOpticalPoll(tenant_id="probe", olt_id=args.address,
                                     profile=profile.name, at=time.time(), onus=onus)
            body = message.model_dump_json(exclude_none=True)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    except SnmpError as exc:
        print(f"poll failed ({exc.kind}): {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not args.quiet:
        for o in onus:
            print(o.model_dump_json(exclude_none=True))
    n = len(onus)
    med_cpu = statistics.median(cpu) * 1000
    print(f"{profile.name}: {n} ONUs ({sum(o.online is True for o in onus)} online), "
          f"{session.requests // len(cpu)} requests/poll, message {len(body)} bytes; "
          f"skipped: {stats.sentinel} sentinel, {stats.implausible} implausible, "
          f"{stats.unparsed} unparsed, {stats.offline} offline", file=sys.stderr)
    print(f"CPU per poll (median of {len(cpu)}): {med_cpu:.1f} ms"
          + (f" = {med_cpu * 128 / n:.1f} ms per 128 ONUs" if n else "")
          + f"; wall {statistics.median(wall) * 1000:.0f} ms", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return asyncio.run(_run(_parse(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
