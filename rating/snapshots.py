"""Snapshots of keyed tables that cost what changed, not what exists.

A stream state that holds many entries (the sessions of a NAS shard, the subscribers of a
rating shard) is snapshotted every epoch, and at realistic rates most epochs change only
some of its entries. Each entry is pickled on its own as ``(key, value_state)`` and the
bytes are kept until the entry changes (the owner drops them then); a snapshot pickles
only the entries without kept bytes and joins all of them end to end, with their sizes.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Iterator


def dump_entries(entries: dict, pickled: dict, state_of: Callable[[Any], Any]
                 ) -> tuple[list[int], bytes]:
    """``(sizes, joined pickles)`` of every entry of ``entries``; ``pickled`` holds the kept
    pickles by key (it must hold none of entries that changed or are gone) and gets the
    new ones."""
    dumps, protocol, parts = pickle.dumps, pickle.HIGHEST_PROTOCOL, []
    for key, value in entries.items():
        b = pickled.get(key)
        if b is None:
            pickled[key] = b = dumps((key, state_of(value)), protocol)
        parts.append(b)
    return list(map(len, parts)), b"".join(parts)


def load_entries(sizes: list[int], joined: bytes) -> Iterator[tuple[bytes, Any, Any]]:
    """``(pickle, key, value_state)`` of every entry ``dump_entries`` joined, in order; the
    pickles are copies (the joined snapshot need not stay alive)."""
    data = memoryview(joined)
    loads = pickle.loads  # one by one: each pickle has its own memo
    start = 0
    for size in sizes:
        b = bytes(data[start:start + size])
        start += size
        key, state = loads(b)
        yield b, key, state
