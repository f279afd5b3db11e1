"""The ``ispstream`` command: one subcommand per process or administrative task.

This is the composition root of every process: it reads ``Settings`` once and hands
real adapters to the code it starts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ispstream.settings import get_settings

log = logging.getLogger("ispstream")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_broker(args: argparse.Namespace) -> int:
    """Host the embedded Kafka-protocol broker until stopped."""
    from ispstream import topics
    from ispstream.kafka import EmbeddedBroker

    settings = get_settings()
    broker = EmbeddedBroker()
    broker.create_topics([settings.topic(t) for t in topics.ALL_TOPICS],
                         settings.topic_partitions)
    print(f"bootstrap={broker.bootstrap}", flush=True)
    log.warning(
        "embedded broker: data is kept in memory only, with bounded retention "
        "(a few MiB per partition, older data dropped silently); for trying ispstream "
        "out, not for production"
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    broker.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending SQL migrations."""
    from ispstream.db import migrate

    applied = migrate(get_settings().dsn())
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_inventory_apply(args: argparse.Namespace) -> int:
    """Upsert tenants, plans, NAS and subscribers from a YAML file."""
    from ispstream.inventory import InventoryError, apply_file

    try:
        summary = apply_file(get_settings().dsn(), args.file)
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def cmd_apikey_create(args: argparse.Namespace) -> int:
    """Create an API key; print only the key."""
    from ispstream.apikeys import ApiKeyError, create_key

    try:
        print(create_key(get_settings().dsn(), args.tenant, args.role,
                         subscriber=args.subscriber))
    except ApiKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_collect_radius(args: argparse.Namespace) -> int:
    """Run the RADIUS accounting collector."""
    from collectors.radius.server import main as run_collector

    return run_collector(get_settings())


def cmd_collect_snmp(args: argparse.Namespace) -> int:
    """Run the SNMP interface poller and (unless --no-traps) the trap receiver."""
    from collectors.snmp import main as run_snmp

    return run_snmp(get_settings(), traps=not args.no_traps)


def cmd_collect_onu(args: argparse.Namespace) -> int:
    """Run the ONU optical poller (OLT vendor profiles)."""
    from collectors.onu import main as run_onu

    return run_onu(get_settings())


WORKERS_HELP = ("worker threads (default 1). They share one interpreter lock and Bytewax "
                "moves items between them: more than one is slower, not faster "
                "(docs/PERFORMANCE.md)")


def cmd_flow_faults(args: argparse.Namespace) -> int:
    """Run the fault-detection dataflow with recovery."""
    from pipelines.faults import main as run_faults

    return run_faults(get_settings(), workers=args.workers)


def cmd_flow_usage(args: argparse.Namespace) -> int:
    """Run the usage dataflow (Bytewax) with recovery."""
    from pipelines.usage import main as run_usage

    return run_usage(get_settings(), workers=args.workers)


def cmd_compiled(args: argparse.Namespace) -> int:
    """How each hot module runs (compiled or Python); --check: 1 if a build is stale."""
    from rating._compiled import main as compiled

    return compiled(["--check"] if args.check else [])


def cmd_flow_enforce(args: argparse.Namespace) -> int:
    """Run the enforce dataflow (Bytewax): actions -> CoA / Disconnect, with recovery."""
    from pipelines.enforce import main as run_enforce

    return run_enforce(get_settings(), workers=args.workers)


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the HTTP API."""
    import uvicorn

    from portal_api.app import create_app

    settings = get_settings()
    host, port = settings.api_bind
    # Open alert streams (SSE) would hold a graceful shutdown for ever: give them 5 s,
    # then close; clients reconnect with Last-Event-ID.
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                access_log=args.access_log, timeout_graceful_shutdown=5)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run everything on embedded defaults with a simulated NAS."""
    from ispstream.demo import main as run_demo

    return run_demo(get_settings(), subscribers=args.subscribers, duration=args.duration)


def cmd_simulate_nas(args: argparse.Namespace) -> int:
    """Send realistic accounting for N subscribers to a collector."""
    from ispstream.nas_simulator import main as run_sim

    return run_sim(args)


def cmd_schemas(args: argparse.Namespace) -> int:
    """Write the JSON Schema of every topic's event contract."""
    import json
    from pathlib import Path

    from ispstream.contracts import SCHEMAS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for topic, model in SCHEMAS.items():
        (out / f"{topic}.v1.json").write_text(
            json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        )
    print(f"wrote {len(SCHEMAS)} schema(s) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ispstream", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "broker",
        help="embedded Kafka-protocol broker (in memory, bounded retention: for trying "
        "ispstream out; production uses Kafka)",
        description="Hosts librdkafka's mock cluster: the real Kafka protocol on a real "
        "port. Prints bootstrap=HOST:PORT first. Data is kept in memory only with bounded "
        "retention (older data is dropped silently); production points "
        "ISPSTREAM_KAFKA_BOOTSTRAP at Kafka.",
    )
    s.set_defaults(func=cmd_broker)

    s = sub.add_parser("migrate", help="apply sql/ migrations to ISPSTREAM_DATABASE_URL")
    s.set_defaults(func=cmd_migrate)

    inv = sub.add_parser("inventory", help="declarative inventory").add_subparsers(
        dest="action", required=True)
    s = inv.add_parser("apply", help="idempotently upsert an inventory YAML file")
    s.add_argument("file")
    s.set_defaults(func=cmd_inventory_apply)

    keys = sub.add_parser("apikey", help="API keys").add_subparsers(dest="action",
                                                                     required=True)
    s = keys.add_parser("create", help="create a key and print it (stored hashed)")
    s.add_argument("--tenant", required=True)
    s.add_argument("--role", required=True, choices=["customer", "operator", "analyst", "admin",
                                                    "radius"])
    s.add_argument("--subscriber", help="for role customer: the subscriber's username")
    s.set_defaults(func=cmd_apikey_create)

    col = sub.add_parser("collect", help="device-facing collectors").add_subparsers(
        dest="collector", required=True)
    s = col.add_parser("radius", help="RADIUS accounting collector (UDP)")
    s.set_defaults(func=cmd_collect_radius)
    s = col.add_parser("snmp", help="SNMP interface poller and trap receiver")
    s.add_argument("--no-traps", action="store_true", help="poll only, receive no traps")
    s.set_defaults(func=cmd_collect_snmp)
    s = col.add_parser("onu", help="ONU optical poller (OLT vendor profiles)")
    s.set_defaults(func=cmd_collect_onu)

    flow = sub.add_parser("flow", help="streaming dataflows").add_subparsers(
        dest="flow", required=True)
    s = flow.add_parser("faults", help="interfaces, optics and traps -> correlated alerts")
    s.add_argument("-w", "--workers", type=int, default=1, help=WORKERS_HELP)
    s.set_defaults(func=cmd_flow_faults)
    s = flow.add_parser("usage", help="accounting -> rated usage -> database")
    s.add_argument("-w", "--workers", type=int, default=1, help=WORKERS_HELP)
    s.set_defaults(func=cmd_flow_usage)
    s = flow.add_parser("enforce", help="actions -> RADIUS CoA / Disconnect to the NAS")
    s.add_argument("-w", "--workers", type=int, default=1, help=WORKERS_HELP)
    s.set_defaults(func=cmd_flow_enforce)

    s = sub.add_parser("api", help="HTTP API (FastAPI) on ISPSTREAM_API_ADDR")
    s.add_argument("--access-log", action="store_true")
    s.set_defaults(func=cmd_api)

    s = sub.add_parser("demo", help="everything on embedded defaults with a simulated NAS")
    s.add_argument("--subscribers", type=int, default=300)
    s.add_argument("--duration", type=float, default=0, help="seconds; 0 = until Ctrl-C")
    s.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulate", help="traffic simulators").add_subparsers(
        dest="what", required=True)
    s = sim.add_parser("nas", help="a NAS sending accounting for N subscribers")
    s.add_argument("--target", default="127.0.0.1:1813")
    s.add_argument("--secret", required=True)
    s.add_argument("--subscribers", type=int, default=300)
    s.add_argument("--username-prefix", default="sub")
    s.add_argument("--interim", type=float, default=10.0, help="seconds between interims")
    s.add_argument("--duration", type=float, default=0, help="seconds; 0 = until Ctrl-C")
    s.set_defaults(func=cmd_simulate_nas)

    s = sub.add_parser("compiled", help="which hot modules run compiled (setup.py builds "
                       "them when it can; ISPSTREAM_PURE_PYTHON=1 runs them as Python)")
    s.add_argument("--check", action="store_true",
                   help="exit 1 if a compiled module no longer matches its source")
    s.set_defaults(func=cmd_compiled)

    s = sub.add_parser("schemas", help="write the topics' JSON Schemas")
    s.add_argument("--out", default="docs/schemas")
    s.set_defaults(func=cmd_schemas)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ispstream`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
