"""The synchronous store: a durable, append-only log of checkpoints per run.

Each method's docstring is its contract. Every write is one LMDB write transaction
that updates the log and all secondary indexes together; a call that raises has
written nothing.
"""

from __future__ import annotations

import enum
import itertools
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import msgspec

from steplog import _cache, _engine, _env, _keys, _record, _residency, _validate
from steplog._cache import Latest
from steplog._keys import U64
from steplog._writer import SEQ_SHIFT, Batch
from steplog.errors import (
    CheckpointNotFound,
    CorruptRecord,
    ForkPointInUse,
    IndexConflict,
    InvalidArgument,
    RecordTooLarge,
    RunExists,
    RunNotFound,
    StorageError,
    StoreClosed,
    WorkflowMismatch,
)
from steplog.model import Checkpoint, RunInfo, Status, VerifyReport

if TYPE_CHECKING:
    from typing import TypeAlias

    Txn: TypeAlias = lmdb.Transaction[bytes]

__all__ = ["DEFAULT_MAX_RECORD_SIZE", "AppendBatch", "Durability", "Store", "open"]

#: Largest decoded payload a record may hold. Bounds memory on decode: a record whose
#: header or zstd frame claims more is refused before it is decompressed (a stream
#: block's size is known only once decoded; a damaged one fails its checksum first).
DEFAULT_MAX_RECORD_SIZE = 64 << 20
#: Records decoded per read transaction while streaming history: keeps memory
#: constant and lets a map resize slip in between chunks of a long replay.
HISTORY_CHUNK = 256
#: A batch of more operations than this is submitted as heavy (see Writer.submit): it
#: takes long enough in the commit leader that earlier callers are woken before it.
HEAVY_BATCH = 16

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_STATUS = -1


#: _RunHeader.streak: the node index says (a format 1 store, or after delete_latest)
UNKNOWN_STREAK = -1
#: _RunHeader.streak: the run's latest checkpoint names no node, or it has none
NO_STREAK = -2

#: _RunHeader.tail holds at most this many streaks, and at most TAIL_BYTES of node
#: names; past either, every streak but the newest goes into the node index at once.
#: An append that starts or lengthens a streak then rewrites only its header, which
#: shares a page with the run's newest records: the node index, whose newest entries
#: sit on another page of the run's segment, is written once per TAIL_MAX streaks
#: instead of at every append. Measured with 20 StepLogSaver threads (one new node per
#: step, its pending writes lengthening the streak): ~30 -> ~21 pages written per
#: group commit.
TAIL_MAX = 8
TAIL_BYTES = 512

#: One streak of a run header's tail: (node, first index, length).
Streak = tuple[bytes, int, int]


class _RunHeader(msgspec.Struct, array_like=True, frozen=True):
    """``runs`` value: the run's segment header. Frozen: the writer keeps the headers
    its appends wrote across commits (see Batch.headers), shared, never copied."""

    run_no: int
    run_id: str
    workflow_id: str | None
    created_ns: int
    updated_ns: int
    length: int
    status: int
    seq: int
    parent_run_id: str | None = None
    parent_index: int | None = None
    parent_run_no: int | None = None
    #: the node the latest checkpoint names, whose streak (node entry) starts at
    #: ``streak`` (format 2 on); ``streak`` is NO_STREAK if the latest names no node
    #: (or the run is empty) and UNKNOWN_STREAK if not known (read the node index)
    streak_node: bytes | None = None
    streak: int = UNKNOWN_STREAK
    #: (format 3 on, where ``streak_node`` and ``streak`` are unused) the run's newest
    #: streaks, oldest first, which the node index does not hold: every one starts
    #: after every indexed streak of the run, and each node's checkpoints are those of
    #: its indexed streaks and of its streaks here (see TAIL_MAX)
    tail: tuple[Streak, ...] = ()
    #: (format 3 on) the seq the run's workflow entry is keyed by: its seq when last
    #: moved, which an append leaves as it is when the run is its workflow's newest
    #: already (the entries' order stays their runs' update order); -1: ``seq``
    wseq: int = -1


_HEADER_ENCODER = msgspec.msgpack.Encoder()
_HEADER_DECODER = msgspec.msgpack.Decoder(_RunHeader)


def _to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _status_of(code: int) -> Status | None:
    return None if code == _NO_STATUS else _record.CODE_STATUS[code]


class Durability(enum.Enum):
    """What an acknowledged append survives. See docs/DURABILITY.md.

    Both modes survive a crash of the process (kill -9) with every acknowledged append,
    and neither can corrupt the store. LMDB modes that can corrupt on an OS crash
    (no sync at all, or write-mapped async flushing) are not offered.
    """

    #: Every acknowledged append survives power loss and OS crashes: each group commit
    #: flushes data and metadata to stable storage before any caller returns.
    FULL = "full"
    #: One flush per group commit instead of two (LMDB's NOMETASYNC): an OS crash or
    #: power loss may undo the last acknowledged commit, never corrupts the store.
    FAST = "fast"


def open(
    path: str | os.PathLike[str],
    *,
    durability: Durability | str = Durability.FULL,
    map_size: int = _env.DEFAULT_MAP_SIZE,
    max_map_size: int | None = None,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
    cache_size: int = _cache.DEFAULT_CACHE_BYTES,
) -> Store:
    """Open the store in directory ``path``, creating it (mode 0700/0600) if absent.

    ``durability`` says what an acknowledged append survives (:class:`Durability`).
    ``map_size`` is the initial LMDB map (capped at ``max_map_size``); it grows
    automatically up to ``max_map_size`` (None: no limit), past which writes raise
    StorageError and leave the store as it was. ``max_record_size`` bounds one checkpoint's
    encoded payload, written or read (a record claiming more is refused as corrupt, so
    reading a store written with a larger limit needs that limit). ``cache_size``
    bounds the bytes of hot runs' latest payloads kept decoded. Handles on one
    directory in one process share one environment and cache: while one is open, a
    second handle's ``map_size``, ``max_map_size`` and ``cache_size`` are the first's
    (its ``durability`` must match). Raises NotAStore / UnsupportedFormat for a
    directory that is not a steplog store or is from a newer format, leaving it
    untouched.
    """
    return Store(
        path,
        durability=durability,
        map_size=map_size,
        max_map_size=max_map_size,
        max_record_size=max_record_size,
        cache_size=cache_size,
    )


class Store:
    """A handle on a steplog store. Thread-safe. Handles on one directory in one
    process share its files, writer and cache; a handle cannot cross fork() (open the
    store in the child)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability | str = Durability.FULL,
        map_size: int = _env.DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        cache_size: int = _cache.DEFAULT_CACHE_BYTES,
    ) -> None:
        try:
            self.durability = Durability(durability)
        except ValueError:
            allowed = ", ".join(repr(d.value) for d in Durability)
            raise InvalidArgument(
                f"durability must be one of {allowed}, not {durability!r} (modes that can "
                "corrupt the store on an OS crash are not offered)"
            ) from None
        if _validate.index(cache_size, "cache_size") < 0:
            raise InvalidArgument(f"cache_size must be >= 0, got {cache_size}")
        sizes = [("map_size", map_size), ("max_record_size", max_record_size)]
        if max_map_size is not None:
            sizes.append(("max_map_size", max_map_size))
        for name, value in sizes:
            if not 0 < _validate.index(value, name) <= sys.maxsize:
                raise InvalidArgument(f"{name} must be > 0 and <= {sys.maxsize}, got {value}")
        if max_map_size is not None:
            map_size = min(map_size, max_map_size)
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"path must be a str or path, not {type(path).__name__}")
        self.path = Path(path)
        self.max_record_size = max_record_size
        engine = _engine.acquire(
            self.path, self.durability is Durability.FULL, map_size, max_map_size, cache_size
        )
        self._engine: _engine.Engine | None = engine
        self._gate = engine.gate
        self._cache = engine.cache
        self._writer = engine.writer
        #: whether node entries may stand for streaks (the store's format, see _keys)
        self._streaks = engine.streaks
        #: whether run headers hold their newest streaks (the store's format)
        self._tails = engine.tails

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close this handle (the store's files close with the last handle in the
        process, after queued writes commit). Idempotent; later calls raise
        StoreClosed."""
        engine, self._engine = self._engine, None
        if engine is not None:
            _engine.release(engine)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live_env(self) -> lmdb.Environment:
        engine = self._engine
        if engine is None:
            raise StoreClosed(f"the store at {str(self.path)!r} is closed")
        return engine.live()

    # ------------------------------------------------------------------ transactions

    def _read(self, fn: Callable[[Txn], T]) -> T:
        gate = self._gate
        while True:
            try:
                gate.enter()
                try:
                    with self._live_env().begin() as txn:
                        return fn(txn)
                finally:
                    gate.leave()
            except lmdb.MapResizedError:
                self._live_engine().adopt_map_size()
            except lmdb.Error as exc:
                raise StorageError(f"read from {str(self.path)!r} failed: {exc}") from exc

    def _scan(self) -> _residency.Scan:
        """Residency bookkeeping for a long scan (see _residency)."""
        return _residency.Scan(self._unmap_resident)

    def _unmap_resident(self) -> None:
        engine = self._engine
        if engine is not None:
            with suppress(StoreClosed):  # the next read says so
                engine.unmap_resident()

    def _view(self, fn: Callable[[_View], T]) -> T:
        """Run ``fn`` on a :class:`_View` of one read transaction."""
        return self._read(lambda txn: fn(_View(self, txn)))

    def _live_engine(self) -> _engine.Engine:
        engine = self._engine
        if engine is None:
            raise StoreClosed(f"the store at {str(self.path)!r} is closed")
        engine.live()
        return engine

    def _write(
        self, op: Callable[[Txn, Batch], T], *, heavy: bool = False, keeps_headers: bool = False
    ) -> T:
        self._live_env()
        return self._writer.submit(op, heavy=heavy, keeps_headers=keeps_headers)

    # ------------------------------------------------------------------ helpers (in txn)

    def _header(self, txn: Txn, rid: bytes) -> _RunHeader | None:
        """The header of the run named ``rid`` (UTF-8 id), or None if there is no such
        run; CorruptRecord if its id entry or header is damaged or missing."""
        run_no = self._run_no(txn, rid)
        if run_no is None:
            return None
        hdr = self._header_by_no(txn, run_no, rid.decode())
        if hdr is None:
            raise CorruptRecord(rid.decode(), -1, "run header missing (purge removes the run)")
        return hdr

    @staticmethod
    def _run_no(txn: Txn, rid: bytes) -> int | None:
        raw = txn.get(_keys.id_key(rid))
        if raw is None:
            return None
        if len(raw) != U64.size:
            raise CorruptRecord(rid.decode(), -1, "id entry is not a run number")
        run_no: int = U64.unpack(raw)[0]
        return run_no

    def _header_by_no(self, txn: Txn, run_no: int, run_id: str = "?") -> _RunHeader | None:
        raw = txn.get(_keys.header_key(run_no))
        if raw is None:
            return None
        try:
            hdr = _HEADER_DECODER.decode(raw)
        except msgspec.DecodeError:
            raise CorruptRecord(run_id, -1, "run header does not decode") from None
        if hdr.status != _NO_STATUS and hdr.status not in _record.CODE_STATUS:
            raise CorruptRecord(run_id, -1, f"run header has unknown status {hdr.status}")
        return hdr

    def _require(self, txn: Txn, rid: bytes) -> _RunHeader:
        hdr = self._header(txn, rid)
        if hdr is None:
            raise RunNotFound(rid.decode())
        return hdr

    @staticmethod
    def _next_run_no(txn: Txn) -> int:
        """A run number never used: one past the counter, or past the greatest in use
        should the counter be missing or damaged (never one that has records)."""
        raw = txn.get(_keys.META_NEXT_RUN_NO)
        last = U64.unpack(raw)[0] if raw is not None and len(raw) == U64.size else 0
        cur = txn.cursor()
        if _seek_last(cur, _keys.SEGMENT):
            key = cur.key()
            if len(key) >= 1 + U64.size:
                last = max(last, U64.unpack_from(key, 1)[0])
        txn.put(_keys.META_NEXT_RUN_NO, U64.pack(last + 1))
        return last + 1

    def _raw_record(self, txn: Txn, hdr: _RunHeader, run_id: str, index: int) -> bytes:
        raw = txn.get(_keys.log_key(hdr.run_no, index))
        if raw is None:
            raise CorruptRecord(run_id, index, "record missing from a run's dense range")
        return raw

    def _payload(
        self, txn: Txn, hdr: _RunHeader, run_id: str, index: int, raw: bytes | None = None
    ) -> tuple[_record.Header, bytes]:
        """Verify and decode record ``index``'s payload, walking its delta chain (at most
        KEYFRAME_INTERVAL records back, less when the run's cached latest payload helps)."""
        if raw is None:
            raw = self._raw_record(txn, hdr, run_id, index)
        head = _record.read_header(run_id, index, raw)
        limit = self.max_record_size
        hit = self._cached(run_id)
        held = hit.payload_of(index, head.seq) if hit is not None else None
        if held is not None:
            return head, held
        if head.depth == 0:
            return head, _record.Chain().decode(run_id, index, raw, head, limit)
        keyframe = index - head.depth
        if hit is not None and keyframe <= hit.index < index:
            # a dictionary-delta tail can start from the cached payload
            hit_raw = self._raw_record(txn, hdr, run_id, hit.index)
            if _record.read_header(run_id, hit.index, hit_raw).seq == hit.seq:
                chain = _record.Chain(hit.index, hit.payload, hit.depth)
                payload = self._walk(txn, hdr, run_id, chain, index, raw, head)
                if payload is not None:
                    return head, payload
        keyframe = self._keyframe_at_or_before(txn, hdr, run_id, keyframe, index)
        payload = self._walk(txn, hdr, run_id, _record.Chain(), index, raw, head, keyframe)
        assert payload is not None
        return head, payload

    def _keyframe_at_or_before(
        self, txn: Txn, hdr: _RunHeader, run_id: str, at: int, index: int
    ) -> int:
        """``at`` if record ``at`` is a keyframe (as record ``index``'s depth says), else
        the nearest keyframe before it: a depth written wrong (steplog 0.1.0 could, in
        a rare batch race) costs a longer walk, not the checkpoint."""
        while at > 0:
            try:
                raw = self._raw_record(txn, hdr, run_id, at)
                if _record.read_header(run_id, at, raw).depth == 0:
                    break
            except CorruptRecord as exc:
                raise CorruptRecord(
                    run_id, index, f"its delta base #{at} is corrupt: {exc.detail}"
                ) from None
            at -= 1
        return at

    def _walk(
        self,
        txn: Txn,
        hdr: _RunHeader,
        run_id: str,
        chain: _record.Chain,
        index: int,
        raw: bytes,
        head: _record.Header,
        start: int | None = None,
    ) -> bytes | None:
        """Decode records ``start`` (default: the one after the chain's) .. ``index``
        through ``chain``; None if a record needs more than the chain holds."""
        limit = self.max_record_size
        at = chain.index + 1 if start is None else start
        payload = None
        while at <= index:
            try:
                rec = raw if at == index else self._raw_record(txn, hdr, run_id, at)
                rec_head = head if at == index else _record.read_header(run_id, at, rec)
                if not chain.can_take(at, rec_head):
                    if start is None:
                        return None
                payload = chain.decode(run_id, at, rec, rec_head, limit)
            except CorruptRecord as exc:
                if at == index:
                    raise
                raise CorruptRecord(
                    run_id, index, f"its delta base #{at} is corrupt: {exc.detail}"
                ) from None
            at += 1
        return payload

    def _latest(self, txn: Txn, hdr: _RunHeader, run_id: str, batch: Batch | None) -> Latest:
        """The run's latest decoded payload (the base of its next delta record)."""
        if batch is not None:
            mine = batch.scratch.get(hdr.run_no)
            if mine is not None and mine.seq == hdr.seq:
                return mine  # type: ignore[no-any-return]
        hit = self._cached_latest(run_id, hdr, hdr.length - 1)
        if hit is not None:
            return hit
        index = hdr.length - 1
        head, payload = self._payload(txn, hdr, run_id, index)
        return Latest(index, head.seq, head.depth, payload)

    def _cached(self, run_id: str) -> Latest | None:
        """The run's cache entry, unless it holds a payload over this handle's
        max_record_size: handles in one process share the cache, and a record past
        this handle's limit is read as if cold (and refused the same way)."""
        hit = self._cache.get(run_id)
        if hit is None:
            return None
        limit = self.max_record_size
        if len(hit.payload) > limit:
            return None
        for anchor in hit.anchors:
            if len(anchor.payload) > limit:
                return None
        return hit

    def _cached_latest(self, run_id: str, hdr: _RunHeader, index: int) -> Latest | None:
        """The cached payload of record ``index``, if it is the run's latest."""
        hit = self._cached(run_id)
        if hit is not None and hit.seq == hdr.seq and hit.index == index:
            return hit
        return None

    def _held(self, run_id: str, hdr: _RunHeader, index: int) -> bytes | None:
        """The cached payload of record ``index``: the run's latest, or one of the
        records it keeps before it (its anchors). (While the entry is the run's latest,
        the records before it are the ones it saw: a run only changes at its end.)"""
        hit = self._cached(run_id)
        if hit is None or hit.seq != hdr.seq or hit.index != hdr.length - 1:
            return None
        if index == hit.index:
            return hit.payload
        for anchor in hit.anchors:
            if anchor.index == index:
                return anchor.payload
        return None

    def _node_index(self, txn: Txn, hdr: _RunHeader, node: bytes) -> int | None:
        """Index of the run's latest checkpoint written by ``node``."""
        last = _last_of(txn, hdr, node)
        return None if last is None or not last[1] else last[0] + last[1] - 1

    def _checkpoint(
        self,
        txn: Txn,
        run_id: str,
        hdr: _RunHeader,
        index: int,
        type_: Any = None,
        raw: bytes | None = None,
        *,
        cache: bool = True,
    ) -> Checkpoint:
        """The checkpoint at ``index``. Inside a write transaction pass ``cache=False``:
        what it reads may not be committed, and only committed payloads are cached
        (the write's own after-commit hook caches what it wrote)."""
        head, payload = self._payload(txn, hdr, run_id, index, raw)
        if cache:
            self._cache_if_latest(txn, run_id, hdr, Latest(index, head.seq, head.depth, payload))
        return self._assemble(run_id, index, hdr, head, payload, type_)

    def _cache_if_latest(self, txn: Txn, run_id: str, hdr: _RunHeader, decoded: Latest) -> None:
        """Keep a record just decoded from disk in ``txn`` (with the anchors the read
        found before it) if it is the run's latest and a delta or anchored: the next
        load or append starts from it."""
        if decoded.index != hdr.length - 1 or decoded.seq != hdr.seq:
            return
        if decoded.depth or decoded.anchors:
            self._cache.put(run_id, decoded, read_before=(txn.id() + 1) << SEQ_SHIFT)

    @staticmethod
    def _assemble(
        run_id: str,
        index: int,
        hdr: _RunHeader,
        head: _record.Header,
        payload: bytes,
        type_: Any,
    ) -> Checkpoint:
        node, metadata, state = _record.decode_payload(run_id, index, payload, type_)
        return Checkpoint(
            run_id=run_id,
            index=index,
            workflow_id=hdr.workflow_id,
            created_at=_to_datetime(head.created_ns),
            status=head.status,
            node=node,
            state=state,
            metadata=metadata,
            parent_run_id=hdr.parent_run_id,
            parent_index=hdr.parent_index,
        )

    def _info(self, run_id: str, hdr: _RunHeader) -> RunInfo:
        return RunInfo(
            run_id=run_id,
            workflow_id=hdr.workflow_id,
            created_at=_to_datetime(hdr.created_ns),
            updated_at=_to_datetime(hdr.updated_ns),
            length=hdr.length,
            status=_status_of(hdr.status),
            parent_run_id=hdr.parent_run_id,
            parent_index=hdr.parent_index,
        )

    def _set_recency(
        self, txn: Txn, old: _RunHeader | None, new: _RunHeader, *, newer: bool = True
    ) -> _RunHeader:
        """Write the run's header; move its recency entries (global and workflow) from
        old's seqs to new.seq; a new run (``old`` None) also gets its id entry. Returns
        the header written. ``newer``: new.seq is above every seq in the store (not so
        after delete_latest); then a run already its workflow's newest keeps its
        workflow entry where it is (format 3), as its place in the order is the same."""
        run_no = U64.pack(new.run_no)
        if old is None:
            txn.put(_keys.id_key(new.run_id.encode()), run_no)
        else:
            txn.delete(_keys.recent_key(old.seq))
        txn.put(_keys.recent_key(new.seq), run_no)
        wseq = -1  # keyed by its seq
        if new.workflow_id is not None:
            wf = new.workflow_id.encode()
            if old is None:
                txn.put(_keys.workflow_key(wf, new.seq), run_no)
            else:
                listed = _keys.workflow_key(wf, _wseq(old))
                if newer and self._tails and _last_under(txn, _keys.workflow_prefix(wf), listed):
                    wseq = _wseq(old)
                else:
                    txn.delete(listed)
                    txn.put(_keys.workflow_key(wf, new.seq), run_no)
        if new.wseq != wseq:
            new = msgspec.structs.replace(new, wseq=wseq)
        txn.put(_keys.header_key(new.run_no), _HEADER_ENCODER.encode(new))
        return new

    def _encode(self, run_id: str, node: str | None, metadata: dict[str, Any], state: Any) -> bytes:
        payload = _record.encode_payload(run_id, node, metadata, state)
        if len(payload) > self.max_record_size:
            raise RecordTooLarge(run_id, len(payload), self.max_record_size)
        return payload

    def _put_checkpoint(
        self,
        txn: Txn,
        rid: bytes,
        old: _RunHeader | None,
        hdr: _RunHeader,
        node: bytes | None,
        payload: bytes,
        status: Status,
        batch: Batch,
        run_id: str,
        body: _record.Body | None = None,
        after: Latest | None = None,
    ) -> _RunHeader:
        """Write the run's next record (a delta against its latest when it pays) and
        every index entry; return the new header. Call last in an op: it records the
        payload for later ops of the batch and for the cache after commit.

        ``body`` may be compressed ahead, outside the commit, as the record after
        ``after``; it is used only if that is still the run's latest."""
        index = hdr.length
        seq = batch.next_seq()
        created_ns = max(time.time_ns(), hdr.updated_ns)
        prev: Latest | None = None
        if body is not None and self._follows(body, after, hdr, batch):
            if len(payload) < _record.DELTA_MIN_BYTES:  # its anchors may be needed
                # the record compressed against: the cache entry, or one of this batch
                prev = after if after is not None and after.seq == hdr.seq else None
                prev = prev or batch.scratch.get(hdr.run_no)
                if prev is not None and prev.seq != hdr.seq:
                    prev = None
        else:
            prev = self._latest(txn, hdr, run_id, batch) if index else None
            if prev is None:
                body = _record.keyframe(payload)
            elif prev.stream is not None:
                body = _record.follow(
                    payload, prev.payload, prev.depth, prev.stream, prev.pos, prev.big
                )
            else:
                body = _record.compress(payload, prev.payload, prev.depth + 1, prev.big)
        depth = body.depth
        record = _record.frame(body, seq=seq, created_ns=created_ns, status=status)
        txn.put(_keys.log_key(hdr.run_no, index), record)
        tail, streak = hdr.tail, NO_STREAK
        if node is not None:
            if self._tails:
                tail, streak = self._grow_tail(txn, hdr, node, index), UNKNOWN_STREAK
            else:
                streak = self._put_node_entry(txn, hdr, node, index)
        new = msgspec.structs.replace(
            hdr,
            length=index + 1,
            updated_ns=created_ns,
            status=_record.STATUS_CODES[status],
            seq=seq,
            streak_node=node if streak >= 0 else None,
            streak=streak,
            tail=tail,
        )
        new = self._set_recency(txn, old, new)
        anchors = prev.anchors_after(payload) if prev is not None else ()
        latest = Latest(index, seq, depth, payload, body.stream, body.pos, body.big, anchors)
        older: Latest | None = batch.scratch.get(hdr.run_no)
        stale = older.stream if older is not None else None
        if depth == 0 and stale is not None and stale is not body.stream:
            stale.close()  # started earlier in this commit, now superseded
        batch.scratch[hdr.run_no] = latest
        batch.after_commit.append(lambda: self._cache.put(run_id, latest))
        return new

    @staticmethod
    def _grow_tail(txn: Txn, hdr: _RunHeader, node: bytes, index: int) -> tuple[Streak, ...]:
        """The header's tail once checkpoint ``index`` (the run's next) is added under
        ``node`` (format 3): its newest streak lengthened if it is ``node``'s and ends
        right before, else a streak started; past TAIL_MAX streaks or TAIL_BYTES of
        names, every streak but the newest is written to the node index."""
        tail = hdr.tail
        if tail:
            name, start, length = tail[-1]
            if name == node and start + length == index:
                return (*tail[:-1], (node, start, length + 1))
        tail = (*tail, (node, index, 1))
        if len(tail) > TAIL_MAX or sum(len(streak[0]) for streak in tail) > TAIL_BYTES:
            for name, start, length in tail[:-1]:
                txn.put(_keys.node_key(hdr.run_no, name, start), _keys.streak_value(length))
            tail = tail[-1:]
        return tail

    def _put_node_entry(self, txn: Txn, hdr: _RunHeader, node: bytes, index: int) -> int:
        """Index checkpoint ``index`` (the run's next) under ``node``: lengthen the
        node's streak if it ends right before (a store of format 2 on), else start one.
        Returns where the streak starts (UNKNOWN_STREAK in a format 1 store)."""
        run_no = hdr.run_no
        if not self._streaks:
            txn.put(_keys.node_key(run_no, node, index), b"")
            return UNKNOWN_STREAK
        if hdr.streak == NO_STREAK or 0 <= hdr.streak < index:  # the header knows
            start = hdr.streak if hdr.streak_node == node else NO_STREAK
        else:  # unknown (or a damaged header's word): ask the node index
            last = _last_streak(txn, run_no, node)
            start = last[0] if last is not None and last[0] + last[1] == index else NO_STREAK
        if start < 0:
            txn.put(_keys.node_key(run_no, node, index), b"")
            return index
        txn.put(_keys.node_key(run_no, node, start), _keys.streak_value(index - start + 1))
        return start

    @staticmethod
    def _follows(body: _record.Body, after: Latest | None, hdr: _RunHeader, batch: Batch) -> bool:
        """Whether ``body``, compressed as the record after ``after``, may be written
        as the run's next record: ``after`` must still be the run's latest."""
        if body.depth == 0:
            return True
        if after is None:
            return False
        mine: Latest | None = batch.scratch.get(hdr.run_no)
        if mine is not None and mine.seq == hdr.seq:  # written earlier in this commit
            # the record written may differ from the one prepared (recompressed because
            # its own base had moved): same payload, but maybe another depth or codec
            return (
                mine.payload is after.payload
                and mine.stream is after.stream
                and mine.pos == after.pos
                and mine.depth == after.depth
                and mine.big == after.big
            )
        return after.seq == hdr.seq

    # ------------------------------------------------------------------ writes

    def append(
        self,
        run_id: str,
        state: Any,
        *,
        workflow_id: str | None = None,
        node: str | None = None,
        status: Status | str = Status.RUNNING,
        metadata: Mapping[str, Any] | None = None,
        expected_index: int | None = None,
    ) -> Checkpoint:
        """Append the next checkpoint of ``run_id`` and return it once it is durable.

        Its index is the run's length before the call. The first append creates the
        run and fixes its ``workflow_id``; a later append naming another workflow
        raises WorkflowMismatch (None means "the run's own"). With
        ``expected_index``, the append happens only if it would get that index, else
        IndexConflict (carrying the actual next index) and nothing is written.
        """
        req = self._prepare(
            run_id, state, workflow_id, node, status, metadata, expected_index, alone=True
        )
        return req.checkpoint(self._write(req.apply, keeps_headers=True))

    def _append_quietly(
        self, run_id: str, state: Any, *, workflow_id: str | None = None, node: str | None = None
    ) -> None:
        """:meth:`append` for callers that do not use the Checkpoint (the LangGraph
        saver): the same write, without building its result."""
        req = self._prepare(
            run_id, state, workflow_id, node, Status.RUNNING, None, None, alone=True
        )
        self._write(req.apply, keeps_headers=True)

    def append_many(
        self,
        run_id: str,
        states: Iterable[Any],
        *,
        workflow_id: str | None = None,
        node: str | None = None,
        status: Status | str = Status.RUNNING,
        metadata: Mapping[str, Any] | None = None,
        expected_index: int | None = None,
    ) -> list[Checkpoint]:
        """Append several checkpoints to one run atomically, in one commit.

        Same rules as :meth:`append` for each state; ``expected_index`` applies to the
        first. Either every checkpoint is appended (and durable on return) or, if
        any is refused, none is.
        """
        self._live_env()
        collector = AppendBatch(self)
        for i, state in enumerate(states):
            collector.append(
                run_id,
                state,
                workflow_id=workflow_id,
                node=node,
                status=status,
                metadata=metadata,
                expected_index=expected_index if i == 0 else None,
            )
        return collector.commit()

    @contextmanager
    def batch(self) -> Iterator[AppendBatch]:
        """Collect appends (to any runs) and commit them atomically on exit.

        ``with store.batch() as b: b.append(...)``: each ``b.append`` validates and
        encodes at once (bad input raises there); on a clean exit all are appended in
        one transaction, durable when the block returns, and ``b.checkpoints`` holds
        the results. If the block raises, or any append is refused at commit
        (IndexConflict, WorkflowMismatch), nothing of the batch is written.
        """
        collector = AppendBatch(self)
        yield collector
        collector.commit()

    def _prepare(
        self,
        run_id: str,
        state: Any,
        workflow_id: str | None,
        node: str | None,
        status: Status | str,
        metadata: Mapping[str, Any] | None,
        expected_index: int | None,
        prior: _AppendRequest | None = None,
        alone: bool = False,
    ) -> _AppendRequest:
        """Validate, encode and compress an append outside any transaction.

        Compression happens here, in the caller's thread, so the leader's write
        transaction stays short: the payload is compressed as the record after the
        run's cached latest, or after ``prior`` (an earlier append to the same run in
        the same batch), or after its latest record read now (a run the cache does not
        hold), or as a keyframe (a run with no records); the commit re-checks that
        base. Failing that, the commit compresses against the run's actual latest. The
        commit also compresses the next block of a cached run's live stream when that
        is cheap (see _record.LEADER_BLOCK_BYTES), for an append ``alone`` (not part
        of a batch, whose later appends to the run follow this one's body): then no
        body is made here."""
        rid = _validate.ident(run_id, "run_id")
        wf = _validate.optional_ident(workflow_id, "workflow_id")
        node_key = _validate.optional_ident(node, "node")
        status_ = _validate.status(status)
        meta = _validate.metadata(metadata)
        expected = _validate.optional_nonnegative(expected_index, "expected_index")
        payload = self._encode(run_id, node, meta, state)
        self._live_env()
        after: Latest | None = None
        body = None
        if prior is not None:  # without a body of its own, it leaves this one to the commit
            pb = prior.body
            if pb is not None:
                after = Latest(-1, -1, pb.depth, prior.payload, pb.stream, pb.pos, pb.big)
        else:
            after = self._cache.get(run_id)
            if after is None:
                after, body = self._base_ahead(run_id, rid, payload)
            elif alone and _record.cheap_follow(
                payload, after.depth, after.stream, after.pos, after.big
            ):
                after = None  # the commit compresses it (see _record.LEADER_BLOCK_BYTES)
        if after is not None and body is None:
            body = _record.follow(
                payload, after.payload, after.depth, after.stream, after.pos, after.big
            )
        return _AppendRequest(
            self,
            run_id,
            rid,
            workflow_id if wf is not None else None,
            node,
            node_key,
            status_,
            meta,
            expected,
            payload,
            state,
            body,
            after,
        )

    def _base_ahead(
        self, run_id: str, rid: bytes, payload: bytes
    ) -> tuple[Latest | None, _record.Body | None]:
        """For a run the cache does not hold, read in the caller's thread: (its latest
        record, None) to compress against, or (None, a keyframe) if it has no records,
        or (None, None) if it cannot be read here (the commit then reports why)."""

        def read(txn: Txn) -> Latest | None:
            hdr = self._header(txn, rid)
            if hdr is None or hdr.length == 0:
                return None
            return self._latest(txn, hdr, run_id, None)

        try:
            latest = self._read(read)
        except (CorruptRecord, StorageError):
            return None, None
        if latest is None:
            return None, _record.keyframe(payload)
        if latest.stream is None:  # decoded from disk: a dictionary delta, as in the commit
            latest = replace(latest, pos=_record.NO_STREAM)
        return latest, None

    def _apply_append(self, req: _AppendRequest, txn: Txn, batch: Batch) -> _RunHeader:
        """Write the append; return the run's new header (the caller makes the
        Checkpoint, outside the leader's transaction: see _AppendRequest.checkpoint)."""
        old = batch.header(req.rid)
        if old is None:
            old = self._header(txn, req.rid)
        if old is None:
            now = time.time_ns()
            hdr = _RunHeader(
                run_no=self._next_run_no(txn),
                run_id=req.run_id,
                workflow_id=req.workflow_id,
                created_ns=now,
                updated_ns=now,
                length=0,
                status=_NO_STATUS,
                seq=0,
                streak=NO_STREAK,
            )
        else:
            hdr = old
            if req.workflow_id is not None and req.workflow_id != hdr.workflow_id:
                raise WorkflowMismatch(req.run_id, hdr.workflow_id, req.workflow_id)
        if req.expected is not None and req.expected != hdr.length:
            raise IndexConflict(req.run_id, req.expected, hdr.length)
        new = self._put_checkpoint(
            txn,
            req.rid,
            old,
            hdr,
            req.node_key,
            req.payload,
            req.status,
            batch,
            req.run_id,
            req.body,
            req.after,
        )
        batch.wrote_header(req.rid, new)
        return new

    def fork(
        self,
        source_run_id: str,
        index: int,
        new_run_id: str,
        *,
        overrides: Mapping[str, Any] | Any = None,
        workflow_id: str | None = None,
    ) -> Checkpoint:
        """Start run ``new_run_id`` from checkpoint ``index`` of ``source_run_id``.

        The new run's checkpoint 0 is an independent copy of the source checkpoint
        (state, node, status, metadata) with ``overrides`` applied: a mapping whose
        keys replace or add keys of a mapping state (for a Struct or dataclass state,
        its fields). Its header records the parent run and index; the source run is
        never changed. ``workflow_id`` defaults to the source run's. Negative
        ``index`` counts from the end. Raises RunNotFound, CheckpointNotFound,
        RunExists (target taken) or InvalidArgument.
        """
        src = _validate.ident(source_run_id, "source_run_id")
        idx = _validate.index(index)
        dst = _validate.ident(new_run_id, "new_run_id")
        wf = _validate.optional_ident(workflow_id, "workflow_id")
        patch = self._overrides(new_run_id, overrides)
        self._live_env()

        def op(txn: Txn, batch: Batch) -> Checkpoint:
            parent = self._require(txn, src)
            at = idx + parent.length if idx < 0 else idx
            if not 0 <= at < parent.length:
                raise CheckpointNotFound(source_run_id, idx, parent.length)
            if self._header(txn, dst) is not None:
                raise RunExists(new_run_id)
            origin = self._checkpoint(txn, source_run_id, parent, at, cache=False)
            state = origin.state
            if patch:
                if not isinstance(state, dict):
                    raise InvalidArgument(
                        f"run {source_run_id!r} checkpoint {at}: overrides need a mapping "
                        f"or struct state, not {type(state).__name__}"
                    )
                state = {**state, **patch}
            payload = self._encode(new_run_id, origin.node, origin.metadata, state)
            now = time.time_ns()
            hdr = _RunHeader(
                run_no=self._next_run_no(txn),
                run_id=new_run_id,
                workflow_id=workflow_id if wf is not None else parent.workflow_id,
                created_ns=now,
                updated_ns=now,
                length=0,
                status=_NO_STATUS,
                seq=0,
                parent_run_id=source_run_id,
                parent_index=at,
                parent_run_no=parent.run_no,
                streak=NO_STREAK,
            )
            node = origin.node.encode() if origin.node is not None else None
            txn.put(_keys.child_key(parent.run_no, at, hdr.run_no), dst)
            new = self._put_checkpoint(
                txn, dst, None, hdr, node, payload, origin.status, batch, new_run_id
            )
            return self._checkpoint(txn, new_run_id, new, 0, cache=False)

        return self._write(op)

    @staticmethod
    def _overrides(run_id: str, overrides: Any) -> dict[str, Any]:
        if overrides is None:
            return {}
        if isinstance(overrides, Mapping):
            patch = dict(overrides)
        elif isinstance(overrides, msgspec.Struct) or (
            is_dataclass(overrides) and not isinstance(overrides, type)
        ):
            patch = (
                msgspec.structs.asdict(overrides)
                if isinstance(overrides, msgspec.Struct)
                else asdict(overrides)
            )
        else:
            raise InvalidArgument(
                f"overrides must be a mapping (or Struct/dataclass), not {type(overrides).__name__}"
            )
        if not all(isinstance(k, str) for k in patch):
            raise InvalidArgument("overrides keys must be str")
        builtins = _record.to_builtins(run_id, patch)
        assert isinstance(builtins, dict)
        return builtins

    def delete_latest(self, run_id: str) -> Checkpoint | None:
        """Remove only the newest checkpoint of ``run_id`` and return it.

        Returns None if the run has no checkpoints. Raises RunNotFound, or
        ForkPointInUse (naming the child runs) if that checkpoint is a fork point.
        An emptied run keeps its header (and lineage); ``purge`` removes it.
        """
        rid = _validate.ident(run_id, "run_id")
        self._live_env()

        def op(txn: Txn, batch: Batch) -> Checkpoint | None:
            hdr = self._require(txn, rid)
            if hdr.length == 0:
                return None
            index = hdr.length - 1
            children = self._children_at(txn, hdr.run_no, index)
            if children:
                raise ForkPointInUse(run_id, index, children)
            gone = self._checkpoint(txn, run_id, hdr, index, cache=False)
            if index > 0:
                prev = _record.read_header(
                    run_id, index - 1, self._raw_record(txn, hdr, run_id, index - 1)
                )
                seq, updated, status = prev.seq, prev.created_ns, _record.STATUS_CODES[prev.status]
            else:
                seq = batch.next_seq()
                updated, status = max(time.time_ns(), hdr.updated_ns), _NO_STATUS
            txn.delete(_keys.log_key(hdr.run_no, index))
            tail = hdr.tail
            if gone.node is not None:
                node = gone.node.encode()
                if (
                    self._tails
                    and tail
                    and tail[-1][0] == node
                    and tail[-1][1] + tail[-1][2] - 1 == index
                ):
                    name, start, length = tail[-1]  # its streak is the tail's newest
                    tail = (*tail[:-1], (name, start, length - 1)) if length > 1 else tail[:-1]
                else:
                    _drop_node_entry(txn, hdr.run_no, node, index)
            new = msgspec.structs.replace(
                hdr,
                length=index,
                seq=seq,
                updated_ns=updated,
                status=status,
                streak_node=None,
                streak=UNKNOWN_STREAK if index else NO_STREAK,
                tail=tail,
            )
            self._set_recency(txn, hdr, new, newer=False)  # its seq went back
            self._forget(batch, run_id, hdr.run_no)
            return gone

        return self._write(op)

    def _children_at(self, txn: Txn, run_no: int, index: int | None) -> list[str]:
        out: list[str] = []
        for _key, value in _prefix_items(txn, _keys.child_prefix(run_no, index)):
            try:
                out.append(value.decode())
            except UnicodeDecodeError:
                raise CorruptRecord(
                    f"#{run_no}", -1 if index is None else index, "children entry damaged"
                ) from None
        return out

    def purge(self, run_id: str) -> int:
        """Remove the run's whole history, header and index entries; return how many
        checkpoints were removed. Runs forked from it keep working (their lineage
        ends at it). Raises RunNotFound.
        """
        rid = _validate.ident(run_id, "run_id")
        self._live_env()
        return self._write(
            lambda txn, batch: self._apply_purge(txn, batch, run_id, rid), heavy=True
        )

    def _apply_purge(self, txn: Txn, batch: Batch, run_id: str, rid: bytes) -> int:
        try:
            hdr = self._require(txn, rid)
        except CorruptRecord:
            return self._purge_damaged(txn, batch, run_id, rid)
        self._delete_prefix(txn, _keys.segment_prefix(hdr.run_no))
        self._delete_prefix(txn, _keys.child_prefix(hdr.run_no))
        if hdr.parent_run_no is not None and hdr.parent_index is not None:
            txn.delete(_keys.child_key(hdr.parent_run_no, hdr.parent_index, hdr.run_no))
        txn.delete(_keys.recent_key(hdr.seq))
        if hdr.workflow_id is not None:
            txn.delete(_keys.workflow_key(hdr.workflow_id.encode(), _wseq(hdr)))
        txn.delete(_keys.id_key(rid))
        self._forget(batch, run_id, hdr.run_no)
        return hdr.length

    def _purge_damaged(self, txn: Txn, batch: Batch, run_id: str, rid: bytes) -> int:
        """Purge a run whose id entry or header is damaged or missing: its segment and
        every index entry naming its number (found by scanning those indexes)."""
        raw = txn.get(_keys.id_key(rid))
        txn.delete(_keys.id_key(rid))
        if raw is None or len(raw) != U64.size:
            return 0
        run_no = U64.unpack(raw)[0]
        removed = sum(1 for _ in _prefix_items(txn, _keys.log_prefix(run_no)))
        self._delete_prefix(txn, _keys.segment_prefix(run_no))
        self._delete_prefix(txn, _keys.child_prefix(run_no))
        for table in (_keys.RECENT, _keys.WORKFLOWS, _keys.CHILDREN):
            for key, value in list(_prefix_items(txn, table)):
                named = key[-U64.size :] if table == _keys.CHILDREN else value
                if named == raw:
                    txn.delete(key)
        self._forget(batch, run_id, run_no)
        return removed

    def _forget(self, batch: Batch, run_id: str, run_no: int) -> None:
        """Drop a run's latest payload from the batch and, after commit, the cache."""
        batch.scratch.pop(run_no, None)
        batch.after_commit.append(lambda: self._cache.discard(run_id))

    @staticmethod
    def _delete_prefix(txn: Txn, prefix: bytes) -> None:
        cur = txn.cursor()
        if not cur.set_range(prefix):
            return
        while cur.key().startswith(prefix):
            if not cur.delete():
                break

    # ------------------------------------------------------------------ reads

    def load(
        self,
        run_id: str,
        index: int | None = None,
        *,
        node: str | None = None,
        type: Any = None,
    ) -> Checkpoint | None:
        """The checkpoint at ``index`` of ``run_id`` (latest if None; negative counts
        from the end), or with ``node=`` the latest checkpoint that node wrote.

        Returns None when the run, index or node has no checkpoint. ``type=`` decodes
        the state into that type (Struct, dataclass, TypedDict, builtins); a state
        that does not fit raises SchemaMismatch. A damaged record raises
        CorruptRecord; wrong data is never returned.
        """
        rid = _validate.ident(run_id, "run_id")
        idx = None if index is None else _validate.index(index)
        node_b = _validate.optional_ident(node, "node")
        if idx is not None and node_b is not None:
            raise InvalidArgument("load takes index= or node=, not both")
        if type is not None:
            _record.decoder_for(type)

        def op(txn: Txn) -> Checkpoint | None:
            hdr = self._header(txn, rid)
            if hdr is None or hdr.length == 0:
                return None
            if node_b is not None:
                found = self._node_index(txn, hdr, node_b)
                if found is None:
                    return None
                at = found
            elif idx is None:
                at = hdr.length - 1
                cached = self._cached_latest(run_id, hdr, at)
                if cached is not None:
                    # the run header holds the latest record's time and status
                    head = _record.Header(
                        codec=_record.CODEC_RAW,
                        status=_record.CODE_STATUS[hdr.status],
                        depth=cached.depth,
                        seq=cached.seq,
                        created_ns=hdr.updated_ns,
                        raw_len=len(cached.payload),
                    )
                    return self._assemble(run_id, at, hdr, head, cached.payload, type)
            else:
                at = idx + hdr.length if idx < 0 else idx
                if not 0 <= at < hdr.length:
                    return None
            return self._checkpoint(txn, run_id, hdr, at, type)

        return self._read(op)

    def latest(self, workflow_id: str) -> Checkpoint | None:
        """The newest checkpoint across all runs of ``workflow_id`` (None if none)."""
        prefix = _keys.workflow_prefix(_validate.ident(workflow_id, "workflow_id"))

        def op(txn: Txn) -> Checkpoint | None:
            for hdr in self._newest_first(txn, prefix):
                if hdr.length > 0:
                    return self._checkpoint(txn, hdr.run_id, hdr, hdr.length - 1)
            return None

        return self._read(op)

    def run(self, run_id: str) -> RunInfo | None:
        """The header of ``run_id``, or None if there is no such run."""
        rid = _validate.ident(run_id, "run_id")

        def op(txn: Txn) -> RunInfo | None:
            hdr = self._header(txn, rid)
            return None if hdr is None else self._info(run_id, hdr)

        return self._read(op)

    def _numbered_run(self, run_id: str) -> tuple[int, RunInfo] | None:
        """The run's number (never reused: a purged id that is reused gets another) and
        header, or None."""
        rid = _validate.ident(run_id, "run_id")

        def op(txn: Txn) -> tuple[int, RunInfo] | None:
            hdr = self._header(txn, rid)
            return None if hdr is None else (hdr.run_no, self._info(run_id, hdr))

        return self._read(op)

    def runs(
        self,
        workflow_id: str | None = None,
        *,
        status: Status | str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Runs (of ``workflow_id``, with latest ``status``), newest-updated first."""
        wf = _validate.optional_ident(workflow_id, "workflow_id")
        want = None if status is None else _record.STATUS_CODES[_validate.status(status)]
        cap = _validate.optional_nonnegative(limit, "limit")
        prefix = _keys.workflow_prefix(wf) if wf is not None else _keys.RECENT

        def op(txn: Txn) -> list[RunInfo]:
            out: list[RunInfo] = []
            if cap == 0:
                return out
            for hdr in self._newest_first(txn, prefix):
                if want is None or hdr.status == want:
                    out.append(self._info(hdr.run_id, hdr))
                    if cap is not None and len(out) >= cap:
                        break
            return out

        return self._read(op)

    def _newest_first(self, txn: Txn, prefix: bytes) -> Iterator[_RunHeader]:
        """Headers of the runs listed under a recency ``prefix`` (global or one
        workflow's), most recently updated first."""
        cur = txn.cursor()
        ok = _seek_last(cur, prefix)
        while ok and cur.key().startswith(prefix):
            value = cur.value()
            try:
                hdr = (
                    self._header_by_no(txn, U64.unpack(value)[0])
                    if len(value) == U64.size
                    else None
                )
            except CorruptRecord:
                hdr = None  # a damaged run is left out; verify() reports it
            if hdr is not None:
                yield hdr
            ok = cur.prev()

    def history(
        self,
        run_id: str,
        *,
        start: int = 0,
        stop: int | None = None,
        node: str | None = None,
        type: Any = None,
    ) -> Iterator[Checkpoint]:
        """Checkpoints ``start`` .. ``stop - 1`` of ``run_id`` in ascending index order;
        with ``node=``, only the checkpoints that node wrote.

        Slicing rules are a list's (negative bounds count from the end). Streams in
        bounded chunks: memory stays constant however long the run. Raises
        RunNotFound (eagerly, at the call).
        """
        rid = _validate.ident(run_id, "run_id")
        lo = _validate.index(start, "start")
        hi = None if stop is None else _validate.index(stop, "stop")
        node_b = _validate.optional_ident(node, "node")
        if type is not None:
            _record.decoder_for(type)
        if node_b is not None:
            # one transaction for the header and the first chunk: a node's checkpoints
            # are often few (a LangGraph checkpoint's pending writes, say)
            def first_chunk(txn: Txn) -> tuple[_RunHeader, int, list[Checkpoint]]:
                hdr = self._require(txn, rid)
                first, last, _ = slice(lo, hi).indices(hdr.length)
                return hdr, last, self._node_chunk(txn, run_id, hdr, node_b, first, last, type)

            hdr, last, chunk = self._read(first_chunk)
            if len(chunk) < HISTORY_CHUNK:
                return iter(chunk)
            return itertools.chain(
                chunk, self._node_stream(run_id, hdr, node_b, chunk[-1].index + 1, last, type)
            )
        hdr = self._read(lambda txn: self._require(txn, rid))
        first, last, _ = slice(lo, hi).indices(hdr.length)
        return self._stream(run_id, hdr, first, last, type)

    def _node_chunk(
        self, txn: Txn, run_id: str, hdr: _RunHeader, node: bytes, lo: int, hi: int, type_: Any
    ) -> list[Checkpoint]:
        """Up to HISTORY_CHUNK checkpoints of ``node`` with index in [lo, hi)."""
        indices = _node_indices(txn, hdr, node, lo, hi, HISTORY_CHUNK)
        return [self._checkpoint(txn, run_id, hdr, index, type_) for index in indices]

    def _node_stream(
        self, run_id: str, hdr: _RunHeader, node: bytes, first: int, last: int, type_: Any
    ) -> Iterator[Checkpoint]:
        at = first
        scan = self._scan()
        rid = run_id.encode()

        def chunk(txn: Txn, lo: int) -> list[Checkpoint]:
            # the node index and the header's tail as of this transaction (a tail may
            # have moved into the index since ``hdr`` was read)
            now = self._header(txn, rid) if self._tails else hdr
            if now is None or now.run_no != hdr.run_no:
                return []  # purged meanwhile
            return self._node_chunk(txn, run_id, now, node, lo, last, type_)

        while at < last:
            lo = at
            batch = self._read(lambda txn: chunk(txn, lo))  # noqa: B023
            if not batch:
                return
            scan.check()
            yield from batch
            at = batch[-1].index + 1

    def _stream(
        self, run_id: str, hdr: _RunHeader, first: int, last: int, type_: Any
    ) -> Iterator[Checkpoint]:
        # ``prev`` carries the decoding chain (and its record's seq) across chunks, so
        # each delta record decodes in one step. Records below a run's tail never
        # change, but the tail may be deleted and re-appended between chunks: the
        # carried seq is checked against the stored record before it is trusted.
        prev: tuple[int, _record.Chain] | None = None
        segment = _keys.log_prefix(hdr.run_no)
        at = first
        scan = self._scan()
        while at < last:
            chunk_end = min(at + HISTORY_CHUNK, last)

            def op(
                txn: Txn,
                lo: int = at,
                hi: int = chunk_end,
                carried: tuple[int, _record.Chain] | None = prev,
            ) -> tuple[list[Checkpoint], tuple[int, _record.Chain] | None, int | None]:
                chain = _record.Chain()
                if carried is not None:
                    seq, chain = carried
                    raw_prev = txn.get(_keys.log_key(hdr.run_no, chain.index))
                    if raw_prev is None or (
                        _record.read_header(run_id, chain.index, raw_prev).seq != seq
                    ):
                        chain = _record.Chain()
                out: list[Checkpoint] = []
                # records up to the run's current length must all be there (it may
                # have shrunk since the previous chunk: delete_latest, purge)
                now = self._header_by_no(txn, hdr.run_no, run_id)
                end = min(hi, now.length if now is not None else 0)
                expected = lo
                limit = self.max_record_size
                seq = -1
                cur = txn.cursor()
                if expected < end and cur.set_key(_keys.log_key(hdr.run_no, lo)):
                    for key, raw in cur:
                        if len(key) != _keys.LOG_KEY_SIZE or not key.startswith(segment):
                            break
                        index = _keys.log_index(key)
                        if index != expected or index >= end:
                            break
                        head = _record.read_header(run_id, index, raw)
                        if chain.can_take(index, head):
                            payload = chain.decode(run_id, index, raw, head, limit)
                        else:
                            chain = _record.Chain()
                            start = self._keyframe_at_or_before(
                                txn, hdr, run_id, index - head.depth, index
                            )
                            decoded = self._walk(txn, hdr, run_id, chain, index, raw, head, start)
                            assert decoded is not None
                            payload = decoded
                        seq = head.seq
                        out.append(self._assemble(run_id, index, hdr, head, payload, type_))
                        expected += 1
                gap = expected if expected < end else None
                return out, ((seq, chain) if out else carried), gap

            batch, prev, gap = self._read(op)
            scan.check()
            yield from batch
            if gap is not None:  # what came before it was yielded
                raise CorruptRecord(run_id, gap, "record missing from a run's dense range")
            if not batch:
                return
            at = batch[-1].index + 1
            if len(batch) < chunk_end - batch[0].index:
                return

    def lineage(self, run_id: str) -> list[RunInfo]:
        """``run_id``'s header, its parent's, ... up to the root. A purged ancestor
        ends the chain (the child still names it). Raises RunNotFound."""
        rid = _validate.ident(run_id, "run_id")

        def op(txn: Txn) -> list[RunInfo]:
            hdr = self._require(txn, rid)
            chain = [self._info(run_id, hdr)]
            while hdr.parent_run_no is not None:
                parent = self._header_by_no(txn, hdr.parent_run_no)
                if parent is None:  # purged (a reused id would have another run_no)
                    break
                chain.append(self._info(parent.run_id, parent))
                hdr = parent
            return chain

        return self._read(op)

    def verify(self) -> VerifyReport:
        """Check the whole store: every record's checksum and decoding, dense indices,
        and that every secondary index agrees with the log. Reads one consistent
        snapshot (writes proceed meanwhile; a map resize waits). Returns a report; it
        raises only for a closed store or a storage failure."""
        from steplog._verify import verify

        unmap = self._live_engine().unmap_resident_held  # the read holds the gate
        return self._read(
            lambda txn: verify(self, txn, _HEADER_DECODER.decode, _residency.Scan(unmap))
        )

    def children(self, run_id: str, index: int | None = None) -> list[str]:
        """Ids of runs forked from ``run_id`` (from checkpoint ``index`` if given)."""
        rid = _validate.ident(run_id, "run_id")
        idx = None if index is None else _validate.index(index)

        def op(txn: Txn) -> list[str]:
            hdr = self._require(txn, rid)
            at = idx + hdr.length if idx is not None and idx < 0 else idx
            if at is not None and not 0 <= at < hdr.length:
                return []
            return self._children_at(txn, hdr.run_no, at)

        return self._read(op)


class _AppendRequest:
    """A validated, encoded append waiting for its transaction."""

    __slots__ = (
        "after",
        "body",
        "expected",
        "metadata",
        "node",
        "node_key",
        "payload",
        "rid",
        "run_id",
        "state",
        "status",
        "store",
        "workflow_id",
    )

    def __init__(
        self,
        store: Store,
        run_id: str,
        rid: bytes,
        workflow_id: str | None,
        node: str | None,
        node_key: bytes | None,
        status: Status,
        metadata: dict[str, Any],
        expected: int | None,
        payload: bytes,
        state: Any,
        body: _record.Body | None,
        after: Latest | None,
    ) -> None:
        self.store = store
        self.body = body
        self.after = after
        self.run_id = run_id
        self.rid = rid
        self.workflow_id = workflow_id
        self.node = node
        self.node_key = node_key
        self.status = status
        self.metadata = metadata
        self.expected = expected
        self.payload = payload
        self.state = state

    def apply(self, txn: Txn, batch: Batch) -> _RunHeader:
        return self.store._apply_append(self, txn, batch)

    def checkpoint(self, new: _RunHeader) -> Checkpoint:
        """The appended checkpoint, from the run's header right after the append."""
        return Checkpoint(
            run_id=self.run_id,
            index=new.length - 1,
            workflow_id=new.workflow_id,
            created_at=_to_datetime(new.updated_ns),
            status=self.status,
            node=self.node,
            state=self.state,
            metadata=self.metadata,
            parent_run_id=new.parent_run_id,
            parent_index=new.parent_index,
        )


class AppendBatch:
    """Writes collected by :meth:`Store.batch`, committed together on exit: appends,
    and purges (so a batch can atomically replace a run's contents)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        #: each queued write: an append's request (None for a purge), and its op
        self._ops: list[tuple[_AppendRequest | None, Callable[[Txn, Batch], Any]]] = []
        self._last: dict[str, _AppendRequest] = {}  # each run's latest queued append
        #: each run's newest stream a keyframe of this batch started
        self._streams: dict[str, _record.Stream] = {}
        #: The appended checkpoints, in call order, once the batch has committed.
        self.checkpoints: list[Checkpoint] = []

    def commit(self) -> list[Checkpoint]:
        """Apply everything queued, atomically, in one commit (``Store.batch`` calls
        this on exit); return the appended checkpoints."""
        ops, self._ops = self._ops, []
        if ops:
            results = self._store._write(
                lambda txn, batch: [op(txn, batch) for _req, op in ops],
                heavy=len(ops) > HEAVY_BATCH,
            )
            self.checkpoints = [
                req.checkpoint(new)
                for (req, _op), new in zip(ops, results, strict=True)
                if req is not None
            ]
        return self.checkpoints

    def append(
        self,
        run_id: str,
        state: Any,
        *,
        workflow_id: str | None = None,
        node: str | None = None,
        status: Status | str = Status.RUNNING,
        metadata: Mapping[str, Any] | None = None,
        expected_index: int | None = None,
    ) -> None:
        """Queue an append (same arguments as :meth:`Store.append`)."""
        req = self._store._prepare(
            run_id,
            state,
            workflow_id,
            node,
            status,
            metadata,
            expected_index,
            self._last.get(run_id),
        )
        self._last[run_id] = req
        body = req.body
        if body is not None and body.depth == 0:
            # a keyframe: the stream this batch started before it for the run takes no
            # more blocks, so its compressor goes now rather than at commit
            older = self._streams.pop(run_id, None)
            if older is not None:
                older.close()
            if body.stream is not None:
                self._streams[run_id] = body.stream
        self._ops.append((req, req.apply))

    def purge(
        self, run_id: str, *, missing_ok: bool = False, expected_index: int | None = None
    ) -> None:
        """Queue a purge (see :meth:`Store.purge`); with ``missing_ok`` a run that does
        not exist is skipped instead of failing the batch. With ``expected_index``, the
        batch commits only if the run's next index is still that (0 for a run that does
        not exist), else IndexConflict: a read-then-replace of a run loses no append
        that landed in between."""
        rid = _validate.ident(run_id, "run_id")
        expected = _validate.optional_nonnegative(expected_index, "expected_index")
        store = self._store
        self._last.pop(run_id, None)

        def op(txn: Txn, batch: Batch) -> None:
            hdr = store._header(txn, rid)
            if expected is not None and expected != (hdr.length if hdr is not None else 0):
                raise IndexConflict(run_id, expected, hdr.length if hdr is not None else 0)
            if missing_ok and hdr is None:
                return
            store._apply_purge(txn, batch, run_id, rid)

        self._ops.append((None, op))


def _wseq(hdr: _RunHeader) -> int:
    """The seq the run's workflow entry is keyed by."""
    return hdr.seq if hdr.wseq < 0 else hdr.wseq


def _last_under(txn: Txn, prefix: bytes, key: bytes) -> bool:
    """Whether ``key`` is stored and is the last key under ``prefix`` (not stored: a
    damaged store lost it, and the caller writes it afresh)."""
    cur = txn.cursor()
    if not cur.set_range(key) or cur.key() != key:
        return False
    return not (cur.next() and cur.key().startswith(prefix))


def _seek_last(cur: Any, prefix: bytes) -> bool:
    """Put ``cur`` on the greatest key that starts with ``prefix``; False if none does."""
    return _seek_before(cur, _keys.prefix_end(prefix), prefix)


def _seek_before(cur: Any, key: bytes | None, prefix: bytes) -> bool:
    """Put ``cur`` on the greatest key below ``key`` (None: any) if it starts with
    ``prefix``; False if it does not, or there is none."""
    found = cur.prev() if key is not None and cur.set_range(key) else cur.last()
    return bool(found) and cur.key().startswith(prefix)


def _last_streak(txn: Txn, run_no: int, node: bytes) -> tuple[int, int] | None:
    """(start, length) of the run's last streak of ``node``'s checkpoints, or None."""
    prefix = _keys.node_prefix(run_no, node)
    cur = txn.cursor()
    if not _seek_last(cur, prefix):
        return None
    return U64.unpack_from(cur.key(), len(prefix))[0], _keys.streak_length(cur.value())


def _last_of(txn: Txn, hdr: _RunHeader, node: bytes) -> tuple[int, int] | None:
    """(start, length) of the run's last streak of ``node``: in the header's tail (read
    in ``txn``), else in the node index; None if the node wrote nothing."""
    for name, start, length in reversed(hdr.tail):
        if name == node:
            return start, length
    return _last_streak(txn, hdr.run_no, node)


def _drop_node_entry(txn: Txn, run_no: int, node: bytes, index: int) -> None:
    """Un-index the run's last checkpoint ``index``, which ``node`` wrote: shorten the
    streak that ends with it, or delete its entry."""
    last = _last_streak(txn, run_no, node)
    if last is None or last[0] + last[1] - 1 != index:
        return  # not indexed (a damaged store): nothing to undo
    start, length = last
    key = _keys.node_key(run_no, node, start)
    if length > 1:
        txn.put(key, _keys.streak_value(length - 1))
    else:
        txn.delete(key)


def _node_indices(
    txn: Txn, hdr: _RunHeader, node: bytes, lo: int, hi: int, limit: int | None = None
) -> list[int]:
    """Indices in [lo, hi) of the run's checkpoints ``node`` wrote (at most ``limit``),
    from the node index and the tail of ``hdr`` (read in ``txn``)."""
    prefix = _keys.node_prefix(hdr.run_no, node)
    cur = txn.cursor()
    out: list[int] = []
    if lo >= hi:
        return out
    first = prefix + U64.pack(lo)
    # start at the streak before ``lo`` (it may reach into [lo, hi)), else at ``lo``
    if _seek_before(cur, first, prefix) or cur.set_range(first):
        for key, value in cur.iternext(keys=True, values=True):
            if not key.startswith(prefix):
                break
            start: int = U64.unpack_from(key, len(prefix))[0]
            if not _take(out, start, _keys.streak_length(value), lo, hi, limit):
                return out
    for name, start, length in hdr.tail:  # newer than every indexed streak
        if name == node and not _take(out, start, length, lo, hi, limit):
            break
    return out


def _take(out: list[int], start: int, length: int, lo: int, hi: int, limit: int | None) -> bool:
    """Add the indices in [lo, hi) of a streak to ``out`` (up to ``limit`` in all);
    False once no later streak can add any."""
    if start >= hi:
        return False
    stop = min(start + length, hi)
    if limit is not None:
        stop = min(stop, max(start, lo) + limit - len(out))
    out.extend(range(max(start, lo), stop))
    return len(out) != limit


def _prefix_items(txn: Txn, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    cur = txn.cursor()
    if not cur.set_range(prefix):
        return
    for key, value in cur:
        if not key.startswith(prefix):
            return
        yield key, value


def _node_bound(prefix: bytes, below: str) -> bytes:
    """A key (under ``prefix``) above the node entries of every node below ``below``
    and under all others, for any str. Nodes hold no NUL and at most MAX_ID_BYTES, so
    a node is below a ``below`` that is longer, or has a NUL, exactly when it is at
    most the part of ``below`` before that point."""
    if not isinstance(below, str):
        raise InvalidArgument(f"below must be a str, not {type(below).__name__}")
    raw = below.encode("utf-8", "surrogatepass")
    nul = raw.find(0)
    cut = min(len(raw), _keys.MAX_ID_BYTES, nul if nul >= 0 else len(raw))
    if cut < len(raw):
        return prefix + raw[:cut] + b"\x01"  # after node raw[:cut]'s entries
    return prefix + raw + _keys.SEP  # the first entry of node ``below`` itself


class _View:
    """Reads in one transaction for hot paths inside steplog (StepLogSaver.get_tuple):
    the states of a run's checkpoints without building :class:`Checkpoint` objects.
    Arguments are validated as by the public reads."""

    __slots__ = ("_decoded", "_headers", "_store", "_txn")

    def __init__(self, store: Store, txn: Txn) -> None:
        self._store = store
        self._txn = txn
        self._headers: dict[str, _RunHeader | None] = {}
        #: the record last decoded from disk, by run, with its anchors: what a small
        #: latest decoded right after it keeps
        self._decoded: dict[str, Latest] = {}

    def _header(self, run_id: str) -> _RunHeader | None:
        try:
            return self._headers[run_id]
        except KeyError:
            hdr = self._store._header(self._txn, _validate.ident(run_id, "run_id"))
            self._headers[run_id] = hdr
            return hdr

    def with_node(self, run_id: str, node: str) -> list[Any]:
        """States of every checkpoint ``node`` wrote in the run, in index order."""
        hdr = self._header(run_id)
        if hdr is None:
            return []
        indices = _node_indices(self._txn, hdr, _validate.ident(node, "node"), 0, hdr.length)
        return [self._state(run_id, hdr, at)[1] for at in indices]

    def first_index(self, run_id: str, node: str) -> int | None:
        """The index of the run's first checkpoint ``node`` wrote, or None."""
        hdr = self._header(run_id)
        if hdr is None:
            return None
        found = _node_indices(self._txn, hdr, _validate.ident(node, "node"), 0, hdr.length, 1)
        return found[0] if found else None

    def any_run(self, prefix: str) -> bool:
        """Whether some run's id starts with ``prefix``."""
        key = _keys.id_key(prefix.encode())
        cur = self._txn.cursor()
        return bool(cur.set_range(key)) and cur.key().startswith(key)

    def last_node(self, run_id: str, below: str | None = None) -> tuple[str, list[Any]] | None:
        """The greatest node (in UTF-8 byte order) that wrote a checkpoint of the run,
        or the greatest below ``below``, with the states of its checkpoints in index
        order; None if there is none."""
        found = self.nodes_below(run_id, below, 1)
        if not found:
            return None
        node, indices = found[0]
        hdr = self._header(run_id)
        assert hdr is not None
        return node, [self._state(run_id, hdr, at)[1] for at in indices]

    def nodes_below(
        self, run_id: str, below: str | None = None, limit: int = 1
    ) -> list[tuple[str, list[int]]]:
        """Up to ``limit`` nodes that wrote checkpoints of the run, greatest first (in
        UTF-8 byte order; only those below ``below`` if given), each with the indices
        of its checkpoints in index order. Reads node index keys and the header's tail."""
        hdr = self._header(run_id)
        if hdr is None:
            return []
        prefix = _keys.nodes_prefix(hdr.run_no)
        cut = len(prefix)
        # the entries of nodes below ``below`` sort under ``limit_key``, and a node's
        # name + SEP compares with ``end`` as its entries do with ``limit_key``
        limit_key = None if below is None else _node_bound(prefix, below)
        bound = _keys.prefix_end(prefix) if limit_key is None else limit_key
        end = None if limit_key is None else limit_key[cut:]
        cur = self._txn.cursor()
        found = _seek_before(cur, bound, prefix)
        # The tail's streaks are newer than the indexed ones; a node above the greatest
        # indexed one (``top``) has no indexed streak. (Names hold no NUL, so they
        # compare as their entries' keys do.)
        top = cur.key()[cut : -U64.size - 1] if found else None
        if limit == 1 and hdr.tail:  # (the latest checkpoint of a LangGraph thread)
            best = None
            for name, _first, _length in hdr.tail:
                if (best is None or name > best) and (end is None or name + _keys.SEP < end):
                    best = name
            if best is not None and (top is None or best > top):
                indices = [
                    i for n, first, k in hdr.tail if n == best for i in range(first, first + k)
                ]
                return [(best.decode(), indices)]
        fresh: dict[bytes, list[int]] = {}
        older: dict[bytes, list[int]] = {}
        for name, first, length in hdr.tail:
            if end is not None and name + _keys.SEP >= end:
                continue
            into = fresh if top is None or name > top else older
            got = into.get(name)
            if got is None:
                into[name] = list(range(first, first + length))
            else:
                got.extend(range(first, first + length))
        found_nodes = sorted(fresh.items(), reverse=True)[:limit] if fresh else []
        current = b""
        while found and (current or len(found_nodes) < limit):
            key: bytes = cur.key()
            if not key.startswith(prefix):
                break
            name = key[cut : -U64.size - 1]
            start = U64.unpack_from(key, len(key) - U64.size)[0]
            length = _keys.streak_length(cur.value())
            if length:  # (0: a malformed entry, which stands for nothing)
                if name != current:
                    if len(found_nodes) == limit:
                        break
                    current = name
                    found_nodes.append((name, []))
                found_nodes[-1][1].extend(range(start + length - 1, start - 1, -1))
            found = cur.prev()
        for name, indices in found_nodes:
            if name in fresh:
                continue
            indices.reverse()
            indices.extend(older.pop(name, ()))
        if older:  # tail-only nodes the walk went past (or stopped before)
            found_nodes = sorted(found_nodes + list(older.items()), reverse=True)[:limit]
        return [(name.decode(), indices) for name, indices in found_nodes]

    def _state(self, run_id: str, hdr: _RunHeader, at: int) -> tuple[str | None, Any]:
        store = self._store
        payload = store._held(run_id, hdr, at)
        if payload is None:
            head, payload = store._payload(self._txn, hdr, run_id, at)
            before = self._decoded.get(run_id)
            anchors = before.anchors_after(payload) if before and before.index == at - 1 else ()
            decoded = Latest(at, head.seq, head.depth, payload, anchors=anchors)
            store._cache_if_latest(self._txn, run_id, hdr, decoded)
            self._decoded[run_id] = decoded
            node, _metadata, state = _record.decode_payload(run_id, at, payload)
            return node, state
        return _DECODED.get(run_id, at, payload)


class _Decoded:
    """The decoded states of the few payloads most recently read from the cache through
    a ``_View`` (a LangGraph thread's latest checkpoint and its writes, read again and
    again), keyed by the payload object itself: its callers only read the states.
    Saves decoding a large payload (a long conversation) on every get_tuple."""

    SIZE = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[bytes, str | None, Any]] = OrderedDict()

    def get(self, run_id: str, at: int, payload: bytes) -> tuple[str | None, Any]:
        key = id(payload)  # stable while the entry holds the payload
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is payload:
                self._entries.move_to_end(key)
                return hit[1], hit[2]
        node, _metadata, state = _record.decode_payload(run_id, at, payload)
        with self._lock:
            self._entries[key] = (payload, node, state)
            if len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)
        return node, state


_DECODED = _Decoded()
