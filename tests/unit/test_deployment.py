"""docker-compose.yml and the Dockerfile cannot run here: check they match the code."""

from __future__ import annotations

from pathlib import Path

import yaml

from ispstream import topics
from ispstream.cli import build_parser
from ispstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_parses_and_has_the_stack():
    services = _compose()["services"]
    assert {"kafka", "timescaledb", "migrate", "collector", "flow-usage", "flow-enforce",
            "collector-snmp", "collector-onu", "flow-faults", "api"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "timescaledb" in services["timescaledb"]["image"]


def test_ispstream_services_run_real_subcommands_with_real_settings():
    parser = build_parser()
    fields = {f"ISPSTREAM_{name.upper()}" for name in Settings.model_fields}
    for name, svc in _compose()["services"].items():
        if svc.get("image") != "ispstream:latest":
            continue
        args = parser.parse_args(svc["command"])  # raises SystemExit on a bad command
        assert callable(args.func), name
        unknown = {k for k in svc.get("environment", {}) if k.startswith("ISPSTREAM_")} - fields
        assert not unknown, f"{name} sets settings that do not exist: {unknown}"


def test_compose_creates_every_topic():
    script = _compose()["services"]["kafka-topics"]["command"][0]
    for t in topics.ALL_TOPICS:
        assert t in script


def test_every_process_has_a_service():
    """Each long-running `ispstream` process of the CLI runs in the stack."""
    commands = {tuple(svc["command"]) for svc in _compose()["services"].values()
                if svc.get("image") == "ispstream:latest"}
    for cmd in (("collect", "radius"), ("collect", "snmp"), ("collect", "onu"),
                ("flow", "usage"), ("flow", "enforce"), ("flow", "faults"), ("api",)):
        assert cmd in commands, f"no service runs `ispstream {' '.join(cmd)}`"


def test_dockerfile_copies_every_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pkg in ("ispstream", "collectors", "rating", "pipelines", "portal_api", "sql"):
        assert f"COPY {pkg} {pkg}" in dockerfile
    assert 'ENTRYPOINT ["ispstream"]' in dockerfile
