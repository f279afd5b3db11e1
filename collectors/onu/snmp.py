"""The optics poller's table walks, on the shared SNMP layer of ``collectors.snmp``.

Transports (the own v2c codec on one UDP socket per address family, pysnmp for
SNMPv3), per-device sessions (``max_inflight`` requests in flight, the row's timeout
and retries) and the multi-column GETBULK walk are ``collectors.snmp``'s. What this
module adds is what the profile engine needs: ``Session.walk_columns(columns)`` ->
``{column: [(index suffix, value), ...]}`` with OIDs as tuples of sub-identifiers.

A poll's columns are shared out over ``max_inflight`` concurrent walks; the first one
that fails cancels the others. Errors are ``SnmpError`` (``collectors.snmp.walk``) with
a ``kind``: ``timeout``, ``auth``, ``error-status`` or ``protocol``; an agent whose OIDs
do not increase fails the poll (``protocol``) rather than giving part of a table.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from collectors.snmp.ber import Exceptional, decode_subids, encode_oid
from collectors.snmp.client import Session as BulkSession
from collectors.snmp.client import V2cTransport, V3Transport
from collectors.snmp.devices import Device
from collectors.snmp.walk import SnmpError, walk

__all__ = ["DEFAULT_VARBIND_BUDGET", "SnmpClient", "Session", "SnmpError"]

# Varbinds asked for per GETBULK response (columns x max-repetitions). Agents cap it
# themselves (snmpsim at 64, many OLTs lower); a tooBig answer halves it.
DEFAULT_VARBIND_BUDGET = 48

OID = tuple[int, ...]
Row = tuple[OID, object]  # (index suffix after the column, value)


class SnmpClient:
    """Owns the transports; hands out one ``Session`` per OLT."""

    def __init__(self) -> None:
        self.v2c = V2cTransport()
        self._v3: V3Transport | None = None

    def v3(self) -> V3Transport:
        if self._v3 is None:
            self._v3 = V3Transport()
        return self._v3

    def session(self, device: Device) -> "Session":
        return Session(self, device)

    @property
    def stats(self) -> dict[str, int]:
        """The v2c transport's counters under the optics poller's metric names."""
        s = self.v2c.stats
        return {"malformed_responses": s["malformed"], "unexpected_responses": s["unmatched"]}

    def close(self) -> None:
        self.v2c.close()
        if self._v3 is not None:
            self._v3.close()


class Session:
    """Table walks of one OLT (``ValueError``: a row we cannot talk to)."""

    def __init__(self, client: SnmpClient, device: Device) -> None:
        if device.version not in ("2c", "3"):
            raise ValueError(f"unsupported SNMP version {device.version!r}")
        if device.version == "2c" and device.community is None:
            raise ValueError("SNMPv2c needs a community")
        if device.version == "3" and not device.v3_user:
            raise ValueError("SNMPv3 needs a user")
        if device.retries < 0 or device.max_inflight < 1:
            device = replace(device, retries=max(0, device.retries),
                             max_inflight=max(1, device.max_inflight))
        self.device = device
        self.bulk = BulkSession(device, v2c=client.v2c,
                                v3=client.v3() if device.version == "3" else None)

    @property
    def requests(self) -> int:
        """GETBULK requests sent so far."""
        return self.bulk.requests

    async def walk_columns(self, columns: list[OID],
                           budget: int = DEFAULT_VARBIND_BUDGET) -> dict[OID, list[Row]]:
        """Every row of each column: ``{column: [(index suffix, value), ...]}``
        (noSuchObject / noSuchInstance rows left out)."""
        columns = list(dict.fromkeys(columns))
        groups = max(1, min(self.device.max_inflight, len(columns)))
        chunks = [columns[i::groups] for i in range(groups)]
        results: dict[OID, list[Row]] = {c: [] for c in columns}
        if len(chunks) == 1:
            await self._walk_group(chunks[0], results, budget)
            return results
        tasks = [asyncio.ensure_future(self._walk_group(chunk, results, budget))
                 for chunk in chunks]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:   # the first failure (or our cancellation) ends the other walkers too
            for task in tasks:
                if not task.done():
                    task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return results

    async def _walk_group(self, columns: list[OID], results: dict[OID, list[Row]],
                          budget: int) -> None:
        encoded = [encode_oid(c) for c in columns]
        walked = await walk(self.bulk.bulk, encoded, max(1, budget // len(columns)),
                            varbind_budget=budget)
        if walked.stopped_columns:
            raise SnmpError("agent error: OIDs not increasing", kind="protocol")
        for column, prefix, pairs in zip(columns, encoded, walked.columns):
            n = len(prefix)
            rows = results[column]
            last: OID = ()
            for oid, value in pairs:
                tail = oid[n:]
                # one byte per sub-identifier below 128: most table indexes
                suffix = tuple(tail) if tail.isascii() else decode_subids(tail)
                if suffix <= last:
                    raise SnmpError("agent error: OIDs not increasing", kind="protocol")
                last = suffix
                if value.__class__ is not Exceptional:
                    rows.append((suffix, value))
