"""Rating state of a shard of one tenant's subscribers.

The stream keys rating by ``tenant/shard`` (a stable hash of the username), not by
subscriber: every key costs the stream framework per item and per snapshot, and a batch of
deltas for one shard is rated in one call. Each subscriber's ``SubscriberUsage`` is
pickled on its own and kept until the subscriber rates again, so a snapshot costs the
subscribers that changed (``rating.snapshots``).
"""

from __future__ import annotations

import zlib

from rating.policies import QuotaAction, rate_and_enforce
from rating.sessions import SessionDelta
from rating.snapshots import dump_entries, load_entries
from rating.tariff import RatedPiece, SubscriberUsage, Tariff


def shard_of(username: str | None, shards: int) -> int:
    """The rating shard of a username (CRC-32, stable across processes and versions)."""
    return zlib.crc32((username or "").encode()) % shards


class SubscriberShard:
    """``SubscriberUsage`` per username (a delta without one counts as ``""``)."""

    __slots__ = ("subscribers", "_pickled")

    def __init__(self) -> None:
        self.subscribers: dict[str, SubscriberUsage] = {}
        self._pickled: dict[str, bytes] = {}  # kept pickles of unchanged subscribers

    def rate(self, delta: SessionDelta, tariff: Tariff
             ) -> tuple[list[RatedPiece], list[QuotaAction] | tuple]:
        """``rate_and_enforce`` the delta against its subscriber's usage."""
        username = delta.username or ""
        usage = self.subscribers.get(username)
        if usage is None:
            usage = self.subscribers[username] = SubscriberUsage()
        else:
            self._pickled.pop(username, None)
        return rate_and_enforce(usage, delta, tariff)

    def __getstate__(self) -> tuple[list[int], bytes]:
        return dump_entries(self.subscribers, self._pickled, SubscriberUsage.__getstate__)

    def __setstate__(self, state: tuple[list[int], bytes]) -> None:
        self.subscribers, self._pickled = {}, {}
        new = object.__new__
        for b, username, values in load_entries(*state):
            usage = new(SubscriberUsage)
            usage.__setstate__(values)
            self.subscribers[username] = usage
            self._pickled[username] = b
