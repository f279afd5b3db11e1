"""The fast ``radius.acct`` decoder agrees with the pydantic contract on every input:
the same records accepted with the same values, the same ones rejected with pydantic's
reasons; and the fast path is the one taken for records valid as written."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ispstream.codec import decoder, encoder, mirror_struct
from ispstream.contracts import AcctEvent

decode = decoder(AcctEvent)
pydantic_decode = AcctEvent.__pydantic_validator__.validate_json

BASE = {"v": 1, "tenant_id": "acme", "nas_id": "bng-1", "nas_ip": "192.0.2.1",
        "status": "Interim-Update", "session_id": "8100001A", "username": "alice",
        "received_at": 1700000123.25, "event_timestamp": 1700000120, "delay_time": 3,
        "input_octets": 4294967295, "input_gigawords": 2, "output_octets": 0,
        "output_gigawords": 0, "input_packets": 10, "output_packets": 12,
        "session_time": 600, "interim_interval": 300, "terminate_cause": None,
        "framed_ip": "100.64.0.7", "nas_identifier": "bng-1", "nas_port_id": "ge-0/0/1.100",
        "calling_station_id": "aa:bb:cc:dd:ee:ff"}


def verdict(decode_fn, data: bytes):
    """('ok', field values) or ('error', pydantic's error list)."""
    try:
        ev = decode_fn(data)
    except ValidationError as exc:
        return "error", exc.errors(include_url=False)
    return "ok", {name: getattr(ev, name) for name in AcctEvent.model_fields}


def assert_agrees(data: bytes) -> None:
    # repr: the same types too (1 == 1.0 == True would hide a difference), and NaN
    assert repr(verdict(decode, data)) == repr(verdict(pydantic_decode, data)), data


def doc(**changes) -> bytes:
    d = {**BASE, **changes}
    return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()


def test_a_valid_record_takes_the_fast_path_with_the_contract_values():
    ev = decode(doc())
    assert type(ev) is not AcctEvent  # msgspec's struct: pydantic never ran
    assert {n: getattr(ev, n) for n in AcctEvent.model_fields} == \
        pydantic_decode(doc()).model_dump()


EDGE_CASES = [
    doc(), doc(v=...), doc(username=None), doc(username=...), doc(event_timestamp=...),
    doc(status="Start"), doc(status="Stop", terminate_cause="User-Request"),
    doc(status="Accounting-On"), doc(status="start"), doc(status=None), doc(status=1),
    doc(v=2), doc(v="1"), doc(v=1.0), doc(v=True),
    doc(input_octets=2**32), doc(input_octets=2**32 - 1), doc(input_octets=-1),
    doc(input_gigawords=2**32), doc(output_octets=0), doc(output_gigawords=-1),
    doc(delay_time=-1), doc(delay_time=0), doc(delay_time=...), doc(delay_time=None),
    doc(input_octets="42"), doc(input_octets="4e3"), doc(input_octets=42.0),
    doc(input_octets=42.5), doc(input_octets=True), doc(input_octets=None),
    doc(input_packets=2**70), doc(session_time=-(2**70)), doc(event_timestamp=2**64),
    doc(received_at=1), doc(received_at="1700000000.5"), doc(received_at=None),
    doc(received_at=2**70), doc(received_at=1e308), doc(received_at=True),
    doc(tenant_id=7), doc(tenant_id=None), doc(tenant_id=...), doc(tenant_id=""),
    doc(session_id="é/ü\u2028\t\"\\"), doc(session_id=["x"]), doc(nas_ip={"a": 1}),
    doc(username=12), doc(framed_ip=False), doc(extra_field={"nested": [1, 2]}),
    doc(interim_interval="300"), doc(interim_interval=300.0),
    b'{"tenant_id":"a","tenant_id":"b","nas_id":"n","nas_ip":"i","status":"Start",'
    b'"session_id":"s","received_at":1}',
    b'{"tenant_id":"a","nas_id":"n","nas_ip":"i","status":"Start","status":"Bad",'
    b'"session_id":"s","received_at":1}',
    b'{"tenant_id":"\\ud800","nas_id":"n","nas_ip":"i","status":"Start","session_id":"s",'
    b'"received_at":1}',
    b'{"tenant_id":"\\u00e9","nas_id":"n","nas_ip":"i","status":"Start","session_id":"s",'
    b'"received_at":1}',
    b'{"tenant_id":"\xff","nas_id":"n","nas_ip":"i","status":"Start","session_id":"s",'
    b'"received_at":1}',
    doc() + b" ", doc() + b"x", b" " + doc(), doc()[:-1], b"", b"null", b"[]", b"42",
    b'"text"', b"{}", b"not json", doc(received_at=...).replace(b"}", b',"received_at":NaN}'),
    doc(input_octets=...).replace(b"}", b',"input_octets":1E3}'),
    doc(input_octets=...).replace(b"}", b',"input_octets":-0}'),
]


@pytest.mark.parametrize("data", EDGE_CASES)
def test_edge_cases_get_the_contracts_verdict(data):
    assert_agrees(data)


def test_randomly_mutated_records_get_the_contracts_verdict():
    """10,000 records with fields dropped, nulled or given values of other types."""
    rng = random.Random(20261121)
    values = [None, 0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, -(2**63) - 1, 1.0,
              1.5, -0.0, 1e20, True, False, "", "0", "12", " 12", "1.0", "x", "Start",
              "Stop", "Accounting-Off", "\u00e9", [], [1], {}, {"k": "v"}]
    names = list(BASE)
    for _ in range(10_000):
        d = dict(BASE)
        for name in rng.sample(names, rng.randint(1, 4)):
            if rng.random() < 0.2:
                d.pop(name, None)
            else:
                d[name] = rng.choice(values)
        assert_agrees(json.dumps(d).encode())


def test_contract_features_without_a_strict_equivalent_are_refused():
    class Pattern(BaseModel):
        x: str = Field(pattern="^a")

    class Aliased(BaseModel):
        x: int = Field(alias="y")

    class Forbidding(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: int

    for model in (Pattern, Aliased, Forbidding):
        with pytest.raises(TypeError):
            mirror_struct(model)


def test_encoder_writes_the_models_fields_in_order():
    class M(BaseModel):
        v: Literal[1] = 1
        name: str
        amount: Decimal
        tags: list[str]

    body = encoder(M)(1, 'a"b\n', Decimal("1.05E-8"), ("x", "y"))
    assert body == b'{"v":1,"name":"a\\"b\\n","amount":"1.05E-8","tags":["x","y"]}'
    assert M.model_validate_json(body) == M(name='a"b\n', amount=Decimal("1.05E-8"),
                                            tags=["x", "y"])
