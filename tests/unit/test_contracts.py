"""Event contracts: the published JSON Schemas match the models, and keys are stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ispstream.contracts import SCHEMAS, AcctEvent

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("topic", sorted(SCHEMAS))
def test_published_schema_matches_model(topic):
    published = json.loads((ROOT / "docs" / "schemas" / f"{topic}.v1.json").read_text())
    assert published == SCHEMAS[topic].model_json_schema(), (
        f"docs/schemas/{topic}.v1.json is stale: run `ispstream schemas`")


def test_acct_event_key_and_forward_compatibility():
    ev = AcctEvent.model_validate({
        "tenant_id": "acme", "nas_id": "bng-1", "nas_ip": "192.0.2.1", "status": "Start",
        "session_id": "abc", "received_at": 1.5, "some_future_field": 1})
    assert ev.key() == "acme/bng-1/abc"


@pytest.mark.parametrize("bad", [
    {"status": "Bogus"},
    {"input_octets": 2**32},
    {"delay_time": -1},
    {"v": 2},
])
def test_acct_event_rejects(bad):
    base = {"tenant_id": "acme", "nas_id": "n", "nas_ip": "192.0.2.1", "status": "Start",
            "session_id": "s", "received_at": 1.0}
    with pytest.raises(ValidationError):
        AcctEvent.model_validate({**base, **bad})
