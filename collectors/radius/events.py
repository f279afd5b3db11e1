"""AcctEvent JSON for the hot path: no pydantic per packet.

An event is ``{<NAS prefix>, "received_at": t, <decoded fields>, <the other fields at
their defaults>}``: every field of ``AcctEvent`` is always present, so consumers can
read the JSON directly as well as validate it. The NAS prefix is built once per NAS and
the defaults' tail once per set of decoded fields. Tests validate the output against
the model.
"""

from __future__ import annotations

import json
from json import encoder as _json_encoder

from ispstream.contracts import AcctEvent

FIELDS: tuple[str, ...] = tuple(AcctEvent.model_fields)
_PREFIX_FIELDS = ("v", "tenant_id", "nas_id", "nas_ip", "received_at")
_DEFAULTS = {name: info.default for name, info in AcctEvent.model_fields.items()
             if not info.is_required()}
_REQUIRED_DECODED = frozenset(name for name in FIELDS
                              if name not in _DEFAULTS and name not in _PREFIX_FIELDS)
_TAILS_MAX = 4096


def _fast_dict_encoder():
    """Compact JSON of a flat dict of str/int/float/None, with the C encoder built once
    (``json.dumps`` builds one per call); the public API where there is no C encoder."""
    make = _json_encoder.c_make_encoder
    if make is None:  # pragma: no cover - CPython has it
        return json.JSONEncoder(separators=(",", ":")).encode
    c_encode = make(None, None, _json_encoder.encode_basestring_ascii, None, ":", ",",
                    False, False, True)

    def encode(obj: dict) -> str:
        return "".join(c_encode(obj, 0))

    return encode


encode_dict = _fast_dict_encoder()


def nas_prefix(tenant_id: str, nas_id: str, nas_ip: str) -> str:
    """The JSON text an event of this NAS starts with, up to ``"received_at":``."""
    head = encode_dict({"v": _DEFAULTS["v"], "tenant_id": tenant_id, "nas_id": nas_id,
                        "nas_ip": nas_ip})
    return head[:-1] + ',"received_at":'


class EventEncoder:
    """Encodes decoded fields to AcctEvent JSON bytes."""

    def __init__(self) -> None:
        self._tails: dict[tuple[str, ...], str] = {}

    def encode(self, prefix: str, fields: dict, received_at: float) -> bytes:
        shape = tuple(fields)
        tail = self._tails.get(shape)
        if tail is None:
            tail = self._tail(shape)
        body = encode_dict(fields)
        if len(body) > 2:
            return f"{prefix}{received_at!r},{body[1:-1]}{tail}".encode()
        return f"{prefix}{received_at!r}{tail}".encode()

    def _tail(self, shape: tuple[str, ...]) -> str:
        present = set(shape)
        if (present - set(FIELDS)) or present & set(_PREFIX_FIELDS) \
                or not _REQUIRED_DECODED <= present:
            raise ValueError(f"not the decoded fields of an AcctEvent: {sorted(present)}")
        missing = {name: _DEFAULTS[name] for name in FIELDS
                   if name not in present and name not in _PREFIX_FIELDS}
        tail = ("," + encode_dict(missing)[1:] if missing else "}")
        if len(self._tails) >= _TAILS_MAX:
            self._tails.clear()
        self._tails[shape] = tail
        return tail
