"""A bounded cache of each hot run's latest decoded payload.

It keeps appends (which delta against the previous payload) and latest-loads from
re-reading a run's delta chain. An entry states a fact that never goes stale: "the
record with recency seq S at index I of run R decodes to P". Users check the seq
against the record (or run header) in hand before trusting it, so entries written by
other processes or undone by ``delete_latest`` are simply misses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from steplog._record import Stream

#: Default bytes of decoded payloads kept: 1,000 hot runs of ~64 KiB states.
DEFAULT_CACHE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Latest:
    """Record ``index`` (recency ``seq``, delta ``depth``) decodes to ``payload``; if
    ``stream`` is set, the record is block ``pos`` of that live stream, which the
    run's next record may continue."""

    index: int
    seq: int
    depth: int
    payload: bytes
    stream: Stream | None = None
    pos: int = 0

    @property
    def size(self) -> int:
        """Bytes held: the payload and any live compressor."""
        return len(self.payload) + (self.stream.memory if self.stream is not None else 0)


class LatestCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, Latest] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> Latest | None:
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is not None:
                self._entries.move_to_end(run_id)
            return entry

    def put(self, run_id: str, entry: Latest) -> None:
        size = entry.size
        if size > self._max // 8:
            if entry.stream is None:
                return
            entry = Latest(entry.index, entry.seq, entry.depth, entry.payload)
            size = entry.size
            if size > self._max // 8:
                return
        with self._lock:
            old = self._entries.pop(run_id, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[run_id] = entry
            self._bytes += size
            while self._bytes > self._max:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size

    def discard(self, run_id: str) -> None:
        with self._lock:
            old = self._entries.pop(run_id, None)
            if old is not None:
                self._bytes -= old.size
