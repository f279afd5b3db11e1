"""usage.rated JSON: the encoder gives exactly json.dumps' output and the contract."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from ispstream.contracts import RatedUsage
from pipelines.usage import rated_body
from rating.tariff import RatedPiece


def piece(**kw) -> RatedPiece:
    base = dict(tenant_id="acme", username="alice", nas_id="bng-1", session_id="s1",
                record_id="0123456789abcdef01234567", piece=2, ts_start=1700000000,
                ts=1700000300, plan_id="fiber-500", cycle_start=date(2023, 11, 1),
                upload_bytes=5, download_bytes=4294967301, billable_bytes=4294967306,
                zero_rated_bytes=0, over_quota_bytes=7, charge=Decimal("1.05E-8"),
                currency="EUR", rate_multiplier=Decimal("0.5"),
                flags=("over_quota", "counter_reset"))
    base.update(kw)
    return RatedPiece(**base)


def reference(p: RatedPiece) -> str:
    return json.dumps({
        "v": 1, "tenant_id": p.tenant_id, "username": p.username, "nas_id": p.nas_id,
        "session_id": p.session_id, "record_id": p.record_id, "piece": p.piece,
        "ts_start": p.ts_start, "ts": p.ts, "plan_id": p.plan_id,
        "cycle_start": p.cycle_start.isoformat(), "upload_bytes": p.upload_bytes,
        "download_bytes": p.download_bytes, "billable_bytes": p.billable_bytes,
        "zero_rated_bytes": p.zero_rated_bytes, "over_quota_bytes": p.over_quota_bytes,
        "charge": str(p.charge), "currency": p.currency,
        "rate_multiplier": str(p.rate_multiplier), "flags": list(p.flags)},
        separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("p", [
    piece(),
    piece(plan_id=None, flags=("unknown_subscriber",), charge=Decimal(0)),
    piece(username='we"ird\\user\n\t', session_id="é/ü", flags=()),
    piece(nas_id="bng \u2028 1", charge=Decimal("12.3456789012345")),
])
def test_body_equals_json_dumps_and_validates(p):
    body = rated_body(p)
    assert body == reference(p).encode()
    ev = RatedUsage.model_validate_json(body)
    assert (ev.username, ev.charge, ev.flags) == (p.username, p.charge, list(p.flags))
