"""Fast JSON codecs for the hot topics, derived from the pydantic contracts.

The contracts in ``ispstream.contracts`` stay the definition of every topic (and of its
published JSON Schema). Validating one ``radius.acct`` record with pydantic costs the
usage flow ~4 µs, a sixth of its accounting work, so the flow decodes with a msgspec
struct built from the contract instead (~0.9 µs), and builds ``usage.rated`` with
msgspec's encoder:

- ``decoder(Model)`` mirrors the model's fields, types, defaults and numeric bounds in a
  *strict* msgspec struct. What the strict struct accepts, pydantic accepts with the same
  values; what it refuses (lax coercions such as ``"42"`` for an int, integers beyond
  64 bits, malformed JSON) goes to pydantic, whose answer (a model, or its
  ``ValidationError`` with the reasons) is final. So the accepted records, their values
  and the rejection reasons are pydantic's, at msgspec's cost for records that are valid
  as written.
- ``encoder(Model)`` writes field values, in the model's field order, as the
  compact JSON object ``json.dumps`` of the model's fields gives (``Decimal`` as a
  string, ``date`` in ISO format).

A contract feature with no strict equivalent here (aliases, validators, other
constraints, other ``extra`` policies) raises ``TypeError`` when the codec is built, at
import: the codecs never silently validate less than the contract.
"""

from __future__ import annotations

import typing
from types import NoneType, UnionType
from typing import Annotated, Any, Callable, Union

import annotated_types
import msgspec
from pydantic import BaseModel

_BOUNDS = ((annotated_types.Ge, "ge"), (annotated_types.Gt, "gt"),
           (annotated_types.Le, "le"), (annotated_types.Lt, "lt"))


def _bounds(name: str, metadata: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for cls, key in _BOUNDS:
            if isinstance(m, cls):
                out[key] = getattr(m, key)
                break
        else:
            raise TypeError(f"field {name!r}: no strict equivalent of {m!r}")
    return out


def _strict_type(name: str, annotation: Any, metadata: list) -> Any:
    bounds = _bounds(name, metadata)
    if not bounds:
        return annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, UnionType) and NoneType in args:
        inner = [a for a in args if a is not NoneType]
        if len(inner) != 1:
            raise TypeError(f"field {name!r}: bounds on a union of {inner}")
        return typing.Optional[Annotated[inner[0], msgspec.Meta(**bounds)]]
    return Annotated[annotation, msgspec.Meta(**bounds)]


def mirror_struct(model: type[BaseModel]) -> type[msgspec.Struct]:
    """A strict, frozen msgspec struct with the model's fields (names, types, defaults,
    numeric bounds); unknown fields are ignored, as the contracts do."""
    config = model.model_config
    if config.get("extra", "ignore") != "ignore":
        raise TypeError(f"{model.__name__}: extra={config.get('extra')!r} is not mirrored")
    if model.__pydantic_decorators__.field_validators or \
            model.__pydantic_decorators__.model_validators:
        raise TypeError(f"{model.__name__}: validators are not mirrored")
    fields = []
    for name, info in model.model_fields.items():
        if info.alias not in (None, name) or info.validation_alias is not None:
            raise TypeError(f"{model.__name__}.{name}: aliases are not mirrored")
        tp = _strict_type(name, info.annotation, info.metadata)
        if info.default_factory is not None:
            fields.append((name, tp, msgspec.field(default_factory=info.default_factory)))
        elif info.is_required():
            fields.append((name, tp))
        else:
            fields.append((name, tp, info.default))
    return msgspec.defstruct(f"{model.__name__}Wire", fields, kw_only=True, frozen=True,
                             gc=False, module=__name__)


def decoder(model: type[BaseModel]) -> Callable[[bytes], Any]:
    """``decode(json_bytes)`` -> an object with the model's fields as attributes: the
    strict struct, or, when only pydantic's lax rules accept the input, the model
    itself. Invalid input raises pydantic's ``ValidationError``."""
    fast = msgspec.json.Decoder(mirror_struct(model)).decode
    lax = model.__pydantic_validator__.validate_json

    def decode(data: bytes) -> Any:
        try:
            return fast(data)
        except (msgspec.MsgspecError, ValueError):  # ValueError: bytes that are not UTF-8
            return lax(data)  # pydantic's verdict: a lax coercion, or the reasons

    return decode


def encoder(model: type[BaseModel]) -> Callable[..., bytes]:
    """``encode(*values)`` -> the compact JSON object of the model's fields, ``values``
    being all of them in the model's field order (not validated: the caller's values
    are the contract's by construction)."""
    wire = msgspec.defstruct(f"{model.__name__}Out", list(model.model_fields), gc=False,
                             module=__name__)
    encode = msgspec.json.Encoder(decimal_format="string").encode
    return lambda *values: encode(wire(*values))
