"""RADIUS authorization for FreeRADIUS's ``rest`` module (role radius keys only).

A NAS re-authenticating a subscriber must get the enforced state again. FreeRADIUS calls
``POST /v1/radius/authorize`` in ``authorize`` and maps the HTTP status to its module
return code (see ``deploy/freeradius/``):

| answer | when | rest module |
|---|---|---|
| 204, no body | normal (or no enforced state, or unknown subscriber) | ``ok`` |
| 200, attributes | throttled: the NAS vendor's rate attribute; suspended with a walled garden: its attribute | ``updated`` |
| 401, ``{}`` | suspended (no walled garden) | ``reject`` |
| 404 | the key's tenant has no NAS with that IP | ``notfound`` |
| 403 | no key, invalid key, or not role radius | ``userlock`` |
| 422 / 5xx | bad request / database unavailable | ``invalid`` / ``fail`` |
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ispstream.db import tenant_transaction
from portal_api import services
from portal_api.deps import ConnDep, NowDep, RadiusCaller, RadiusRepliesDep
from portal_api.models import ErrorPublic
from portal_api.radius_replies import rest_body

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/radius", tags=["radius"])

_FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class AccessRequest:
    """The attributes of an Access-Request that authorization needs."""

    username: str
    nas_ip: str


def _invalid(field: str, msg: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", field),
                                    "msg": msg, "input": value}])


def _first(value: Any) -> str | None:
    # rest module JSON: {"type": ..., "value": [v, ...]}; flat JSON: v or [v, ...].
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


async def access_request(request: Request) -> AccessRequest:
    """``User-Name`` and ``NAS-IP-Address`` (or ``NAS-IPv6-Address``) from a form body
    (what the shipped FreeRADIUS configuration sends) or a JSON object."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == _FORM:
            fields = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True,
                                                    strict_parsing=False).items()}
        else:
            doc = json.loads(raw or b"null")
            if not isinstance(doc, dict):
                raise _invalid("User-Name", "expected a JSON object or a form body")
            fields = {k: _first(v) for k, v in doc.items()}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid("User-Name", "expected a JSON object or a form body") from None
    username = fields.get("User-Name") or ""
    if not 1 <= len(username) <= 253:
        raise _invalid("User-Name", "User-Name is required (1 to 253 characters)",
                       username)
    text = fields.get("NAS-IP-Address") or fields.get("NAS-IPv6-Address") or ""
    try:
        nas_ip = str(ipaddress.ip_address(text))
    except ValueError:
        raise _invalid("NAS-IP-Address", "NAS-IP-Address or NAS-IPv6-Address must be an "
                       "IP address", text) from None
    return AccessRequest(username, nas_ip)


AccessRequestDep = Annotated[AccessRequest, Depends(access_request)]


@router.post(
    "/authorize",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        200: {"description": "accept with these reply attributes (rest module format)",
              "content": {"application/json": {"example": {
                  "reply:Mikrotik-Rate-Limit": {"op": ":=", "do_xlat": False,
                                                "value": ["2M/2M"]}}}}},
        204: {"description": "accept: nothing enforced"},
        401: {"description": "reject: the subscriber is suspended",
              "content": {"application/json": {"example": {}}}},
        403: {"model": ErrorPublic, "description": "not a valid key of role radius"},
        404: {"model": ErrorPublic, "description": "no NAS with that IP in the tenant"},
    },
)
def authorize(principal: RadiusCaller, access: AccessRequestDep, conn: ConnDep,
              now: NowDep, replies: RadiusRepliesDep) -> Response:
    """The enforced state of a re-authenticating subscriber, as RADIUS reply attributes
    for FreeRADIUS's `rest` module (called in `authorize`, key of role radius).

    Body: `User-Name` and `NAS-IP-Address` (or `NAS-IPv6-Address`), form-encoded or as
    JSON. The NAS's vendor (from the inventory) chooses the attributes.
    """
    with tenant_transaction(conn, principal.tenant_id):
        answer = services.radius_authorize(conn, principal, access.username,
                                           access.nas_ip, now, replies)
    if not answer.nas_known:
        log.warning("RADIUS authorize: tenant %s has no NAS %s", principal.tenant_id,
                    access.nas_ip)
        return JSONResponse({"detail": f"no NAS with IP {access.nas_ip}"},
                            status_code=status.HTTP_404_NOT_FOUND)
    if answer.reject:
        return JSONResponse({}, status_code=status.HTTP_401_UNAUTHORIZED)
    if answer.attributes:
        return JSONResponse(rest_body(answer.attributes))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
