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
from dataclasses import dataclass, replace

from steplog._record import DELTA_MIN_BYTES, NO_STREAM, Stream

#: Default bytes of decoded payloads kept: 1,000 hot runs of ~64 KiB states.
DEFAULT_CACHE_BYTES = 64 << 20
#: Records a latest entry keeps before it (see Latest.anchors): past this many small
#: records after a large one, the run's next entries keep none.
MAX_ANCHORS = 32


@dataclass(slots=True)  # never mutated; not frozen: a frozen init costs ~0.5 us
class Anchor:
    """Record ``index`` (recency ``seq``) decodes to ``payload``."""

    index: int
    seq: int
    payload: bytes


@dataclass(slots=True)  # never mutated; not frozen: a frozen init costs ~0.5 us
class Latest:
    """Record ``index`` (recency ``seq``, delta ``depth``, ``big`` large records in
    its chain if known) decodes to ``payload``; if ``stream`` is set, the record is
    block ``pos`` of that live stream, which the run's next record may continue.

    ``anchors``: when the latest record is small and follows a large one and maybe
    other small ones (a LangGraph checkpoint, then its pending writes, one record per
    task), those records, oldest first, so reading them does not decode their chain
    again."""

    index: int
    seq: int
    depth: int
    payload: bytes
    stream: Stream | None = None
    pos: int = 0
    big: int | None = None
    anchors: tuple[Anchor, ...] = ()

    @property
    def size(self) -> int:
        """Bytes held: the payloads and any live compressor."""
        held = len(self.payload) + (self.stream.memory if self.stream is not None else 0)
        for anchor in self.anchors:  # a loop: a generator costs ~1 us per call here
            held += len(anchor.payload)
        return held

    def payload_of(self, index: int, seq: int) -> bytes | None:
        """The decoded payload of record ``index`` with recency ``seq``, if held."""
        if index == self.index and seq == self.seq:
            return self.payload
        for anchor in self.anchors:
            if index == anchor.index and seq == anchor.seq:
                return anchor.payload
        return None

    def anchors_after(self, payload: bytes) -> tuple[Anchor, ...]:
        """The anchors of the record after this one (decoding to ``payload``): none if
        that one is large; this record if it is large; else this record's anchors and
        this record, if it has any (up to MAX_ANCHORS)."""
        if len(payload) >= DELTA_MIN_BYTES:
            return ()
        mine = Anchor(self.index, self.seq, self.payload)
        if len(self.payload) >= DELTA_MIN_BYTES:
            return (mine,)
        if not self.anchors or len(self.anchors) >= MAX_ANCHORS:
            return ()
        return (*self.anchors, mine)


class LatestCache:
    """Latest entries by run id, least recently used evicted first.

    Live stream compressors may use at most half the budget: past that, the least
    recently used entries lose theirs first (keeping their payloads), and those runs
    continue their chains with dictionary deltas until their next keyframe starts a
    new stream. So many hot runs degrade to dictionary deltas, not to re-reading
    chains from disk.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._max_streams = max_bytes // 2
        self._bytes = 0
        self._stream_bytes = 0
        self._entries: OrderedDict[str, Latest] = OrderedDict()
        #: what put() counted for each entry (a stream closed later reports memory 0)
        self._counted: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str) -> Latest | None:
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is not None:
                self._entries.move_to_end(run_id)
            return entry

    def put(self, run_id: str, entry: Latest, *, read_before: int | None = None) -> None:
        """Make ``entry`` the run's entry; one too large to keep still evicts the old
        one (which no longer describes the run's latest).

        ``read_before``: the entry was decoded by a read whose snapshot predates every
        seq from this one on. An entry held with such a seq (a commit landed since the
        snapshot) stays: a read never replaces a newer entry, nor takes its live stream.
        For the same record, the entry held stays and takes the read's anchors."""
        size = entry.size
        if size > self._max // 8 and entry.stream is not None:
            entry = _without_stream(entry)
            size = entry.size
        with self._lock:
            held = self._entries.get(run_id)
            if read_before is not None and held is not None:
                if held.seq == entry.seq:  # the same record: it keeps its stream
                    if held.anchors or not entry.anchors:
                        return
                    entry = replace(held, anchors=entry.anchors)
                    size = entry.size
                elif held.seq >= read_before:  # committed after the read's snapshot
                    return
            self._remove(run_id)
            if size > self._max // 8:
                return
            self._entries[run_id] = entry
            memory = entry.stream.memory if entry.stream is not None else 0
            self._counted[run_id] = (size, memory)
            self._bytes += size
            self._stream_bytes += memory
            if self._stream_bytes > self._max_streams:
                self._strip_streams()
            while self._bytes > self._max:
                self._remove(next(iter(self._entries)))

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._remove(run_id)

    def _remove(self, run_id: str) -> None:
        if self._entries.pop(run_id, None) is not None:
            size, memory = self._counted.pop(run_id)
            self._bytes -= size
            self._stream_bytes -= memory

    def _strip_streams(self) -> None:
        """Drop the least recently used entries' compressors until within budget."""
        for run_id, entry in self._entries.items():  # oldest first; values only replaced
            if self._stream_bytes <= self._max_streams:
                return
            if entry.stream is not None:
                stripped = _without_stream(entry)
                self._entries[run_id] = stripped
                size, memory = self._counted[run_id]
                self._counted[run_id] = (stripped.size, 0)
                self._bytes -= size - stripped.size
                self._stream_bytes -= memory


def _without_stream(entry: Latest) -> Latest:
    """The entry minus its compressor: the run's chain goes on as dictionary deltas."""
    return Latest(
        entry.index,
        entry.seq,
        entry.depth,
        entry.payload,
        None,
        NO_STREAM,
        entry.big,
        entry.anchors,
    )
