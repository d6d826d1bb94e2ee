"""The stored record format: a fixed header, then the (compressed) payload.

Layout (little-endian), see docs/ARCHITECTURE.md::

    0  u8   format version (RECORD_VERSION)
    1  u8   codec: 0 raw, 1 zstd frame, 2 zstd delta frame, 3 zstd stream start,
            4 zstd stream block
    2  u8   status code of the checkpoint
    3  u8   delta depth: 0 for a keyframe, else distance to the run's previous keyframe
    4  u32  CRC-32 of bytes [0:4] + [8:]: any flipped stored byte is detected
    8  u64  recency seq of the checkpoint (global commit order)
    16 i64  created_at, ns since the Unix epoch, UTC
    24 u32  decoded payload length
    28 ...  body

The payload is MessagePack ``[node, metadata, state]``. zstd frames also carry
zstd's own checksum of the decoded content. A delta frame is compressed with the
previous record's decoded payload of the same run as a raw-content dictionary, so a
growing state costs bytes proportional to what changed.

A *stream* chain is one zstd frame cut into records: the keyframe (codec 3) holds the
frame header and the first payload's blocks, flushed; each following record (codec
4) holds the next payload's blocks, compressed by the same live compressor, so they
reference the earlier payloads in its window. Appending costs only the new bytes'
compression (no dictionary to rebuild per record) and reading walks the chain
through one decompressor. The frame is never finished: a chain just stops. Every
record still carries its own CRC and decoded length.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import zstandard

from steplog.errors import CorruptRecord, InvalidArgument, SchemaMismatch
from steplog.model import Status

RECORD_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_DELTA = 2
CODEC_STREAM_START = 3
CODEC_STREAM_NEXT = 4
_KEYFRAME_CODECS = (CODEC_RAW, CODEC_ZSTD, CODEC_STREAM_START)
_DELTA_CODECS = (CODEC_DELTA, CODEC_STREAM_NEXT)

HEADER = struct.Struct("<BBBBIQqI")
HEADER_SIZE = HEADER.size

#: Keyframes use zstd's default level 3: within a few percent of level 9's ratio on
#: text-heavy state at about half the CPU.
ZSTD_LEVEL = 3
#: A chain (a keyframe and the deltas after it) holds at most KEYFRAME_INTERVAL large
#: records (payload >= DELTA_MIN_BYTES), LONG_KEYFRAME_INTERVAL once they reach
#: LONG_CHAIN_BYTES, and at most CHAIN_MAX_BYTES of payloads: loading any index decodes
#: at most that many. A keyframe costs a full compression of the state while a delta
#: costs its change, so the larger a state grows, the more a keyframe costs against
#: the deltas it saves. Measured with benchmarks/bench_codec.py on a chat growing to
#: 117 KB: 64 records per chain cost ~440 B per checkpoint and a worst-case cold load
#: of ~0.5 ms, 128 ~360 B and ~0.8 ms; for 2 KiB and 20 KiB states 64 already makes
#: keyframes a small share, and a load by index stays ~2x faster than with 128.
KEYFRAME_INTERVAL = 64
LONG_KEYFRAME_INTERVAL = 128
LONG_CHAIN_BYTES = 32 << 10
CHAIN_MAX_BYTES = 16 << 20
#: zstd level for deltas. Level 1's small match tables miss most matches in a large
#: dictionary (~3.1 KB per chat step vs ~0.63 KB at level 3, for similar CPU), so deltas
#: use zstd's default level 3 (benchmarks/bench_codec.py).
DELTA_LEVEL = 3
#: Payloads under this many bytes keep shorter delta chains (a keyframe at least every
#: SMALL_KEYFRAME_INTERVAL records): their deltas save only tens of bytes each, while
#: random access to one of them (a LangGraph pending write, say) decodes its chain.
DELTA_MIN_BYTES = 1024
SMALL_KEYFRAME_INTERVAL = 8
#: Small records between large ones (a LangGraph checkpoint's pending writes between
#: checkpoints) do not count towards the interval, but a chain holds at most MAX_CHAIN
#: records in all (the delta depth is one byte).
MAX_CHAIN = 255
#: A delta is kept only if it is under 3/4 of a keyframe: a barely smaller delta is not
#: worth lengthening the chain that random access must decode.
DELTA_MAX_SHARE = 0.75
#: A delta bigger than this share of the raw payload is compared with a keyframe, and
#: the smaller one is stored.
DELTA_RECHECK_RATIO = 4
#: Payloads smaller than this are stored raw: a zstd frame's fixed overhead
#: (~13 bytes with checksum) outweighs what it saves.
MIN_COMPRESS_BYTES = 64
#: A stream's zstd window: 4x the keyframe's payload (so the chain can grow), within
#: these bounds. A payload continues a stream only while it and the previous payload
#: fit in the window together. Payloads over STREAM_MAX_PAYLOAD use dictionary deltas
#: instead: a live compressor costs ~window + 0.3 to 0.9 MB of memory.
STREAM_MIN_WINDOW_LOG = 15
STREAM_MAX_WINDOW_LOG = 22
STREAM_MAX_PAYLOAD = (1 << STREAM_MAX_WINDOW_LOG) // 4
#: A stream's match finder: zstd level 3's (double fast), with matches of at least 6
#: bytes for states under LONG_CHAIN_BYTES and 5 for larger ones. Measured with
#: benchmarks/bench_codec.py on chains of 2 KiB, 20 KiB and growing-chat states: 5-byte
#: matches store ~23 / ~140 / ~225 B per record, 6-byte ones ~23 / ~25 / ~235 B (a
#: 20 KiB state that repeats its predecessor is found as one long match instead of
#: many short ones) in less CPU. Level 5's greedy finder stores ~23 / ~24 / ~215 B but
#: costs ~2 us more per 2 KiB append and ~4 us more per chat append (its keyframes);
#: a lazy one (level 6) saves another ~10% on chats at 3x the CPU.
STREAM_LEVEL = 3
STREAM_MIN_MATCH = 6
LARGE_STREAM_LEVEL = 3
LARGE_STREAM_MIN_MATCH = 5
#: Largest match tables of a stream (log2 entries). Measured on growing chats of 100 KB
#: to 700 KB: 2^14 stores the same bytes per step as level 3's 2^17 at the same speed,
#: so 20 hot 100 KB chat streams fit the default cache's compressor budget.
STREAM_MAX_TABLE_LOG = 14

#: The next block of a live stream is compressed by the commit (the group commit's
#: leader, in its write transaction) rather than by the appending thread when it is
#: cheap: the stream's last block came to at most LEADER_BLOCK_BYTES (the state
#: changes little per step, so zstd mostly extends long matches: ~4 us for a 58 KB
#: chat state) and the payload is at most LEADER_PAYLOAD_BYTES. Each compression in the
#: appending thread costs it two GIL round trips (zstd releases the GIL per call, and
#: under load another thread takes it); in the leader it is a few microseconds of its
#: transaction. Measured with 20 StepLogSaver threads on 2 cores (bench.py --one
#: langgraph, 4 paired rounds): ~8 -> ~4.5 context switches per step, +4% to +22%
#: steps/s. Keyframes, large changes and large states stay with the appending thread,
#: so a long compression never holds up the other appends of a commit.
LEADER_BLOCK_BYTES = 4 << 10
LEADER_PAYLOAD_BYTES = 1 << 20

STATUS_CODES: dict[Status, int] = {s: i for i, s in enumerate(Status)}
CODE_STATUS: dict[int, Status] = {i: s for s, i in STATUS_CODES.items()}

T = TypeVar("T")


class _Payload(msgspec.Struct, Generic[T], array_like=True):
    node: str | None
    metadata: dict[str, Any]
    state: T


_ENCODER = msgspec.msgpack.Encoder()
_UNTYPED = msgspec.msgpack.Decoder(_Payload[Any])
_typed_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    ctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if ctx is None:
        ctx = _local.cctx = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
        )
    return ctx


def _dctx() -> zstandard.ZstdDecompressor:
    ctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if ctx is None:
        ctx = _local.dctx = zstandard.ZstdDecompressor()
    return ctx


def encode_payload(run_id: str, node: str | None, metadata: dict[str, Any], state: Any) -> bytes:
    """MessagePack-encode a checkpoint's payload; unencodable state -> InvalidArgument."""
    try:
        return _ENCODER.encode((node, metadata, state))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise InvalidArgument(f"run {run_id!r}: state cannot be encoded: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"run {run_id!r}: {_TOO_DEEP}") from None


_TOO_DEEP = "state refers to itself or nests deeper than Python's recursion limit"


def _on_fresh_stack(fn: Callable[[bytes], T], arg: bytes) -> T:
    """``fn(arg)`` on a new thread, whose stack is empty. msgspec counts nesting against
    the recursion limit together with the caller's frames, so a state encoded from a
    shallow stack may not decode from a deep one (a load deep in a framework); every
    encode runs at least as deep as this thread's start, so a state that encoded
    decodes here."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn(arg)))
        except BaseException as exc:  # re-raised in the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, name="steplog-deep-decode", daemon=True)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def to_builtins(run_id: str, value: Any) -> Any:
    try:
        return msgspec.to_builtins(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise InvalidArgument(f"run {run_id!r}: value cannot be encoded: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"run {run_id!r}: {_TOO_DEEP}") from None


def _full(payload: bytes) -> tuple[int, bytes]:
    if len(payload) >= MIN_COMPRESS_BYTES:
        compressed = _cctx().compress(payload)
        if len(compressed) < len(payload):
            return CODEC_ZSTD, compressed
    return CODEC_RAW, payload


def stream_window_log(payload_len: int) -> int:
    """log2 of the window of a stream starting with a payload of ``payload_len`` bytes."""
    return min(
        max((4 * payload_len - 1).bit_length(), STREAM_MIN_WINDOW_LOG), STREAM_MAX_WINDOW_LOG
    )


def stream_params(
    payload_len: int, level: int | None = None, min_match: int | None = None
) -> zstandard.ZstdCompressionParameters:
    """The compression parameters of a stream starting with a payload of
    ``payload_len`` bytes: ``level``'s match finder with ``min_match`` (by default
    those for states of this size)."""
    if level is None or min_match is None:
        large = payload_len >= LONG_CHAIN_BYTES
        level = LARGE_STREAM_LEVEL if large else STREAM_LEVEL
        min_match = LARGE_STREAM_MIN_MATCH if large else STREAM_MIN_MATCH
    window_log = stream_window_log(payload_len)
    base = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=1 << window_log, window_log=window_log
    )
    # Match tables a quarter of the window, at most 2^STREAM_MAX_TABLE_LOG entries: the
    # same ratio on checkpoint chains as the level's defaults (a state repeats its
    # predecessor in long runs, which small tables find), at half the memory for small
    # states (~0.3 MB) and ~0.4 MB less for large ones.
    table_log = min(base.hash_log, base.chain_log, window_log - 2, STREAM_MAX_TABLE_LOG)
    return zstandard.ZstdCompressionParameters(
        window_log=window_log,
        hash_log=table_log,
        chain_log=table_log,
        search_log=base.search_log,
        min_match=min_match,
        target_length=base.target_length,
        strategy=base.strategy,
        write_checksum=False,
        write_content_size=False,
        write_dict_id=False,
    )


class Stream:
    """A run's live zstd compressor: the writer side of a stream chain.

    ``pos`` counts the blocks it has produced. A block is valid on disk only right
    after the block before it, so a caller continues a stream only if its ``pos`` is
    the one recorded with the run's latest record, and the commit re-checks that the
    run's latest record is still that one. A block that is never committed leaves
    ``pos`` ahead of every recorded position: the stream is then dead, never wrong.
    """

    __slots__ = ("_cctx", "_cobj", "_lock", "_recent", "last_block", "memory", "pos", "window")

    def __init__(self, payload_len: int) -> None:
        params = stream_params(payload_len)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        self._cobj: zstandard.ZstdCompressionObj | None = cctx.compressobj()
        self._lock = threading.Lock()
        self.window = 1 << params.window_log
        self.pos = 0
        #: lengths of the last payloads fed, newest last
        self._recent: tuple[int, ...] = ()
        #: compressed size of the last block
        self.last_block = 0
        self.memory = 0
        self._cctx: zstandard.ZstdCompressor | None = cctx

    def _block(self, payload: bytes) -> bytes:
        assert self._cobj is not None, "a closed stream takes no blocks"
        data = self._cobj.compress(payload) + self._cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.pos += 1
        self._recent = (*self._recent[-3:], len(payload))
        self.last_block = len(data)
        return data

    def close(self) -> None:
        """Free the compressor: the stream takes no more blocks (a batch moved on to a
        newer stream of its run). Its records decode as before: decoding needs none."""
        with self._lock:
            self._cobj = self._cctx = None
            self.pos = _CLOSED  # no caller's position matches: follow() returns None
            self.memory = 0

    def first(self, payload: bytes) -> bytes:
        """The keyframe block (the caller owns this new stream)."""
        data = self._block(payload)
        self.memory = self._cctx.memory_size() if self._cctx is not None else 0
        return data

    def fits(self, payload_len: int) -> bool:
        """Whether a payload can match against the previous one of comparable size (at
        least half its own): that one, the smaller ones fed after it, and the payload
        must fit in the window together. (A small record between two large ones, as
        LangGraph's pending writes between checkpoints, must not hide that the older
        large one would slide out of the window.)"""
        recent = self._recent
        if recent and 2 * recent[-1] >= payload_len:  # the usual case
            return recent[-1] + payload_len <= self.window
        tail = payload_len
        for n in reversed(self._recent):
            tail += n
            if 2 * n >= payload_len:
                break
        return tail <= self.window

    def follow(self, pos: int, payload: bytes) -> bytes | None:
        """The block for ``payload`` right after block ``pos``, or None if the stream
        has moved on or is busy in another thread. Check :meth:`fits` first."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._block(payload) if self.pos == pos else None
        finally:
            self._lock.release()


#: ``Body.pos`` / ``Latest.pos`` of a dictionary delta whose chain went on without its
#: stream: the records after it stay dictionary deltas until the next keyframe.
NO_STREAM = -1
#: ``Stream.pos`` of a closed stream (matches no recorded position).
_CLOSED = -2


@dataclass(slots=True)  # never mutated; not frozen: a frozen init costs ~0.5 us
class Body:
    """A compressed payload, ready to be framed into a record. A stream body also
    names its stream and the stream position after it."""

    codec: int
    data: bytes
    depth: int
    raw_len: int
    stream: Stream | None = None
    pos: int = 0
    #: large records in the chain up to this one (None: unknown, the chain went on
    #: from a record decoded from disk)
    big: int | None = 0


def _is_big(payload: bytes) -> int:
    return 1 if len(payload) >= DELTA_MIN_BYTES else 0


def _big_after(base_big: int | None, payload: bytes) -> int | None:
    """Large records in the chain once ``payload`` follows a chain of ``base_big``
    (None: unknown)."""
    return None if base_big is None else base_big + _is_big(payload)


def interval(size: int) -> int:
    """The most records of ``size`` bytes a chain holds."""
    if size < DELTA_MIN_BYTES:
        return SMALL_KEYFRAME_INTERVAL
    if size < LONG_CHAIN_BYTES:
        return KEYFRAME_INTERVAL
    return max(SMALL_KEYFRAME_INTERVAL, min(LONG_KEYFRAME_INTERVAL, CHAIN_MAX_BYTES // size))


def _keyframe_due(payload: bytes, depth: int, big: int | None) -> bool:
    """Whether a record at chain ``depth`` (``big`` large records in its chain, itself
    included) must be a keyframe: a large one past its size's interval of large
    records, a small one past SMALL_KEYFRAME_INTERVAL records of a chain of small ones,
    any past MAX_CHAIN records. With ``big`` unknown, past its size's interval of
    records."""
    size = len(payload)
    if big is None:
        return depth >= interval(size)
    if depth >= MAX_CHAIN:
        return True
    if size < DELTA_MIN_BYTES:
        return not big and depth >= SMALL_KEYFRAME_INTERVAL
    return big > (KEYFRAME_INTERVAL if size < LONG_CHAIN_BYTES else interval(size))


def _delta(payload: bytes, base: bytes) -> bytes:
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    cctx = zstandard.ZstdCompressor(
        level=DELTA_LEVEL,
        dict_data=dictionary,
        write_checksum=True,
        write_content_size=True,
        write_dict_id=False,
    )
    return cctx.compress(payload)


def cheap_follow(
    payload: bytes, base_depth: int, stream: Stream | None, pos: int, base_big: int | None
) -> bool:
    """Whether :func:`follow` would continue ``stream`` at block ``pos`` with
    ``payload`` cheaply (see LEADER_BLOCK_BYTES): no keyframe due, the stream still at
    that block, small enough, and its last block small."""
    if stream is None or stream.pos != pos or len(payload) > LEADER_PAYLOAD_BYTES:
        return False
    if stream.last_block > LEADER_BLOCK_BYTES or not stream.fits(len(payload)):
        return False
    big = _big_after(base_big, payload)
    return not _keyframe_due(payload, base_depth + 1, big)


def keyframe(payload: bytes) -> Body:
    """A record decodable on its own: a new stream when the payload suits one."""
    if MIN_COMPRESS_BYTES <= len(payload) <= STREAM_MAX_PAYLOAD:
        stream = Stream(len(payload))
        data = stream.first(payload)
        if len(data) < len(payload):
            return Body(
                CODEC_STREAM_START, data, 0, len(payload), stream, stream.pos, _is_big(payload)
            )
    codec, data = _full(payload)
    return Body(codec, data, 0, len(payload), big=_is_big(payload))


def _too_big(payload: bytes, data: bytes) -> bool:
    """A delta not clearly smaller than a keyframe (checked only when it is large)."""
    if len(data) * DELTA_RECHECK_RATIO <= len(payload):
        return False
    return len(data) >= len(_full(payload)[1]) * DELTA_MAX_SHARE


def follow(
    payload: bytes,
    base: bytes,
    base_depth: int,
    stream: Stream | None,
    pos: int,
    base_big: int | None = None,
) -> Body:
    """Compress ``payload`` as the record after the run's latest (decoded ``base``, at
    ``base_depth`` in a chain of ``base_big`` large records, written as block ``pos``
    of ``stream`` if not None).

    Within the keyframe interval: the next block of that stream when it can take it
    and is clearly smaller than a keyframe (compared only when the block is over a
    quarter of the payload, so a growing state's blocks cost one compression); else
    a dictionary delta, which then carries the chain to its next keyframe (``pos``
    NO_STREAM). A state that outgrew
    its stream's window starts a new stream with a keyframe (a dictionary delta per
    append costs several times a stream block's CPU). A latest record without a
    stream (decoded from disk) is followed by a keyframe that starts one. Payloads
    too large for streams use dictionary deltas throughout."""
    depth = base_depth + 1
    size = len(payload)
    big = _big_after(base_big, payload)
    if _keyframe_due(payload, depth, big):
        return keyframe(payload)
    if stream is not None:
        if stream.fits(size):
            data = stream.follow(pos, payload)
            if data is not None and (
                len(data) * DELTA_RECHECK_RATIO <= size or not _too_big(payload, data)
            ):
                return Body(CODEC_STREAM_NEXT, data, depth, size, stream, stream.pos, big)
        elif size <= STREAM_MAX_PAYLOAD:
            return keyframe(payload)  # outgrew the window: a new, wider stream
    elif pos != NO_STREAM and len(payload) <= STREAM_MAX_PAYLOAD:
        return keyframe(payload)
    body = compress(payload, base, depth, base_big)
    if body.depth:
        return Body(body.codec, body.data, body.depth, body.raw_len, None, NO_STREAM, body.big)
    return body


def compress(
    payload: bytes, base: bytes | None = None, depth: int = 0, base_big: int | None = None
) -> Body:
    """Compress ``payload`` as a dictionary delta on ``base`` (the decoded payload of
    the run's latest record, at ``depth - 1`` in a chain of ``base_big`` large records)
    within the keyframe interval, unless
    the delta is not clearly smaller than a keyframe; else as a keyframe. This needs
    only the previous payload, so it serves when no live stream does (another
    process or thread wrote the run's latest record)."""
    big = _big_after(base_big, payload)
    if base is None or depth <= 0 or not base or _keyframe_due(payload, depth, big):
        return keyframe(payload)
    data = _delta(payload, base)
    if _too_big(payload, data):
        return keyframe(payload)
    return Body(CODEC_DELTA, data, depth, len(payload), big=big)


def frame(body: Body, *, seq: int, created_ns: int, status: Status) -> bytes:
    """The stored record: header (with checksum) + body."""
    head = HEADER.pack(
        RECORD_VERSION,
        body.codec,
        STATUS_CODES[status],
        body.depth,
        0,
        seq,
        created_ns,
        body.raw_len,
    )
    crc = zlib.crc32(body.data, zlib.crc32(head[8:], zlib.crc32(head[:4])))
    return head[:4] + struct.pack("<I", crc) + head[8:] + body.data


def pack(
    payload: bytes,
    *,
    seq: int,
    created_ns: int,
    status: Status,
    base: bytes | None = None,
    depth: int = 0,
) -> tuple[bytes, int]:
    """Compress and frame a payload in one step; return the record and its delta depth."""
    body = compress(payload, base, depth)
    return frame(body, seq=seq, created_ns=created_ns, status=status), body.depth


@dataclass(slots=True)  # never mutated; not frozen: a frozen init costs ~0.5 us
class Header:
    codec: int
    status: Status
    depth: int
    seq: int
    created_ns: int
    raw_len: int


def read_header(run_id: str, index: int, record: bytes) -> Header:
    """Parse and verify a record's header and checksum (the body is not decoded)."""
    if len(record) < HEADER_SIZE:
        raise CorruptRecord(
            run_id, index, f"record is {len(record)} bytes, shorter than its header"
        )
    version, codec, status_code, depth, crc, seq, created_ns, raw_len = HEADER.unpack_from(record)
    view = memoryview(record)
    actual = zlib.crc32(view[8:], zlib.crc32(view[:4]))
    if actual != crc:
        raise CorruptRecord(run_id, index, "checksum mismatch")
    if version != RECORD_VERSION:
        raise CorruptRecord(run_id, index, f"unknown record version {version}")
    if codec not in _KEYFRAME_CODECS and codec not in _DELTA_CODECS:
        raise CorruptRecord(run_id, index, f"unknown codec {codec}")
    if (codec in _DELTA_CODECS) != (depth > 0) or depth > index:
        raise CorruptRecord(run_id, index, f"codec {codec} with delta depth {depth}")
    status = CODE_STATUS.get(status_code)
    if status is None:
        raise CorruptRecord(run_id, index, f"unknown status code {status_code}")
    return Header(codec, status, depth, seq, created_ns, raw_len)


class Chain:
    """Decodes a run's records in index order, carrying what the next record of the
    chain needs: the previous payload (for a dictionary delta) and the stream's
    decompressor (for a stream block). Start it at a keyframe, or at a record whose
    decoded payload you hold (``base``, with its delta ``depth``; stream blocks then
    need a restart). ``depth`` is the depth in the chain of the record last decoded,
    so a reader can check that the next delta record says it is one deeper
    (``follows_depth``)."""

    __slots__ = ("_dobj", "depth", "index", "payload")

    def __init__(self, index: int = -1, base: bytes | None = None, depth: int = -1) -> None:
        self.index = index
        self.payload = base
        self.depth = depth
        self._dobj: Any = None

    def can_take(self, index: int, header: Header) -> bool:
        """Whether the record at ``index`` decodes from this chain's state."""
        if header.codec in _KEYFRAME_CODECS:
            return True
        if index != self.index + 1:
            return False
        return (
            self._dobj is not None
            if header.codec == CODEC_STREAM_NEXT
            else self.payload is not None
        )

    def follows_depth(self, index: int, header: Header) -> bool:
        """Whether the record at ``index`` has the depth its place in the chain gives
        it (0 for a keyframe, one more than the record before for a delta)."""
        if header.codec in _KEYFRAME_CODECS:
            return header.depth == 0
        return index == self.index + 1 and header.depth == self.depth + 1

    def decode(self, run_id: str, index: int, record: bytes, header: Header, limit: int) -> bytes:
        """Verify-and-decode the record at ``index`` (its header already read), never
        more than ``limit`` bytes, and advance the chain to it."""
        if header.raw_len > limit:
            raise CorruptRecord(
                run_id, index, f"payload of {header.raw_len} bytes exceeds max_record_size {limit}"
            )
        if not self.can_take(index, header):
            raise CorruptRecord(run_id, index, "delta record without its base")
        body = memoryview(record)[HEADER_SIZE:]
        codec = header.codec
        dobj = None
        try:
            if codec == CODEC_RAW:
                payload = bytes(body)
            elif codec in (CODEC_STREAM_START, CODEC_STREAM_NEXT):
                dobj = self._dobj if codec == CODEC_STREAM_NEXT else _stream_decompressor()
                payload = _inflate_blocks(dobj, body, codec == CODEC_STREAM_START, header.raw_len)
            else:
                if zstandard.frame_content_size(body) != header.raw_len:
                    raise CorruptRecord(
                        run_id, index, "compressed frame size does not match header"
                    )
                if codec == CODEC_DELTA:
                    base = self.payload
                    assert base is not None  # can_take
                    dictionary = zstandard.ZstdCompressionDict(
                        base, dict_type=zstandard.DICT_TYPE_RAWCONTENT
                    )
                    dctx = zstandard.ZstdDecompressor(dict_data=dictionary)
                else:
                    dctx = _dctx()
                payload = dctx.decompress(body, max_output_size=header.raw_len)
        except zstandard.ZstdError as exc:
            self._dobj = None
            raise CorruptRecord(run_id, index, f"decompression failed: {exc}") from None
        if len(payload) != header.raw_len:
            self._dobj = None
            raise CorruptRecord(run_id, index, "decoded length does not match header")
        # the depth the record has in the chain (its header's, unless written wrong)
        depth = 0 if codec in _KEYFRAME_CODECS else self.depth + 1
        self.index, self.payload, self.depth, self._dobj = index, payload, depth, dobj
        return payload


def _inflate_blocks(dobj: Any, body: memoryview, start: bool, limit: int) -> bytes:
    """Inflate a stream record's body block by block, refusing it (ZstdError) once its
    output passes ``limit`` bytes. A stream block carries no content size, and one
    3-byte zstd block header can stand for a whole window of output (an RLE block), so
    a record whose checksum is valid could otherwise inflate to thousands of times its
    declared length; this way at most one block (<= 128 KiB) beyond it is produced."""
    at = zstandard.frame_header_size(body) if start else 0
    end = len(body)
    if _block_end(body, at) == end:  # the usual case: one block, inflated in one call
        return bytes(dobj.decompress(body))
    pieces = []
    total = 0
    cut = 0
    while at < end:
        at = _block_end(body, at)
        piece = dobj.decompress(body[cut:at])
        cut = at
        total += len(piece)
        if total > limit:
            raise zstandard.ZstdError(f"blocks inflate to more than the declared {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def _block_end(body: memoryview, at: int) -> int:
    """Where the zstd block whose 3-byte header starts at ``at`` ends (an RLE block's
    content is one byte, a raw or compressed block's is its size)."""
    if len(body) - at < 3:
        raise zstandard.ZstdError("truncated block header")
    head = int.from_bytes(body[at : at + 3], "little")
    return at + 3 + (1 if (head >> 1) & 3 == 1 else head >> 3)


def _stream_decompressor() -> Any:
    return zstandard.ZstdDecompressor(max_window_size=1 << STREAM_MAX_WINDOW_LOG).decompressobj()


def decoder_for(type_: Any) -> msgspec.msgpack.Decoder[Any]:
    dec = _typed_decoders.get(type_)
    if dec is None:
        try:
            dec = msgspec.msgpack.Decoder(_Payload[type_])
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"type={type_!r} is not a type steplog can decode into: {exc}"
            ) from None
        _typed_decoders[type_] = dec
    return dec


def decode_payload(
    run_id: str, index: int, payload: bytes, type_: Any = None
) -> tuple[str | None, dict[str, Any], Any]:
    """Decode ``[node, metadata, state]``; ``type_`` shapes the state."""
    dec = _UNTYPED if type_ is None else decoder_for(type_)
    try:
        try:
            out = dec.decode(payload)
        except RecursionError:
            out = _on_fresh_stack(dec.decode, payload)
    except RecursionError:
        raise CorruptRecord(
            run_id, index, "payload nests deeper than Python's recursion limit lets it decode"
        ) from None
    except msgspec.ValidationError as exc:
        if type_ is None:  # not even [node, metadata, state]
            raise CorruptRecord(run_id, index, f"payload does not decode: {exc}") from None
        raise SchemaMismatch(run_id, index, type_, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise CorruptRecord(run_id, index, f"payload does not decode: {exc}") from None
    return out.node, out.metadata, out.state
