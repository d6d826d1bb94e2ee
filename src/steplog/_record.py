"""The stored record format: a fixed header, then the (compressed) payload.

Layout (little-endian), see docs/ARCHITECTURE.md::

    0  u8   format version (RECORD_VERSION)
    1  u8   codec: 0 raw, 1 zstd frame, 2 zstd delta frame
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
"""

from __future__ import annotations

import struct
import threading
import zlib
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

HEADER = struct.Struct("<BBBBIQqI")
HEADER_SIZE = HEADER.size

#: Keyframes use zstd's default level 3: within a few percent of level 9's ratio on
#: text-heavy state at about half the CPU.
ZSTD_LEVEL = 3
#: Keyframe at least every KEYFRAME_INTERVAL records: loading any index decodes at most
#: this many records. On the growing-chat workload 32 costs ~630 B per checkpoint (64:
#: ~450 B, 16: ~990 B) while a worst-case load stays under ~0.5 ms for ~120 KB states
#: (benchmarks/bench_codec.py).
KEYFRAME_INTERVAL = 32
#: zstd level for deltas. Level 1's small match tables miss most matches in a large
#: dictionary (~3.1 KB per chat step vs ~0.63 KB at level 3, for similar CPU), so deltas
#: use zstd's default level 3 (benchmarks/bench_codec.py).
DELTA_LEVEL = 3
#: Payloads under this many bytes keep shorter delta chains (a keyframe at least every
#: SMALL_KEYFRAME_INTERVAL records): their deltas save only tens of bytes each, while
#: random access to one of them (a LangGraph pending write, say) decodes its chain.
DELTA_MIN_BYTES = 1024
SMALL_KEYFRAME_INTERVAL = 8
#: A delta is kept only if it is under 3/4 of a keyframe: a barely smaller delta is not
#: worth lengthening the chain that random access must decode.
DELTA_MAX_SHARE = 0.75
#: A delta bigger than this share of the raw payload is compared with a keyframe, and
#: the smaller one is stored.
DELTA_RECHECK_RATIO = 4
#: Payloads smaller than this are stored raw: a zstd frame's fixed overhead
#: (~13 bytes with checksum) outweighs what it saves.
MIN_COMPRESS_BYTES = 64

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


def decode_state_untyped(payload: bytes) -> Any:
    """Decode just the state of a payload, as builtins."""
    return _UNTYPED.decode(payload).state


def to_builtins(run_id: str, value: Any) -> Any:
    try:
        return msgspec.to_builtins(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise InvalidArgument(f"run {run_id!r}: value cannot be encoded: {exc}") from None


def _full(payload: bytes) -> tuple[int, bytes]:
    if len(payload) >= MIN_COMPRESS_BYTES:
        compressed = _cctx().compress(payload)
        if len(compressed) < len(payload):
            return CODEC_ZSTD, compressed
    return CODEC_RAW, payload


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


@dataclass(frozen=True, slots=True)
class Body:
    """A compressed payload, ready to be framed into a record."""

    codec: int
    data: bytes
    depth: int
    raw_len: int


def compress(payload: bytes, base: bytes | None = None, depth: int = 0) -> Body:
    """Compress ``payload``: as a delta on ``base`` (the previous record's payload, at
    ``depth - 1``) within the keyframe interval, unless the delta is not clearly smaller
    than a keyframe."""
    interval = KEYFRAME_INTERVAL if len(payload) >= DELTA_MIN_BYTES else SMALL_KEYFRAME_INTERVAL
    if base is None or depth <= 0 or depth >= interval or not base:
        codec, data = _full(payload)
        return Body(codec, data, 0, len(payload))
    data = _delta(payload, base)
    if len(data) * DELTA_RECHECK_RATIO > len(payload):
        full_codec, full_data = _full(payload)
        if len(data) >= len(full_data) * DELTA_MAX_SHARE:
            return Body(full_codec, full_data, 0, len(payload))
    return Body(CODEC_DELTA, data, depth, len(payload))


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


@dataclass(frozen=True, slots=True)
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
    if codec not in (CODEC_RAW, CODEC_ZSTD, CODEC_DELTA):
        raise CorruptRecord(run_id, index, f"unknown codec {codec}")
    if (codec == CODEC_DELTA) != (depth > 0) or depth > index:
        raise CorruptRecord(run_id, index, f"codec {codec} with delta depth {depth}")
    status = CODE_STATUS.get(status_code)
    if status is None:
        raise CorruptRecord(run_id, index, f"unknown status code {status_code}")
    return Header(codec, status, depth, seq, created_ns, raw_len)


def unpack_payload(
    run_id: str, index: int, record: bytes, header: Header, limit: int, base: bytes | None = None
) -> bytes:
    """Return the decoded payload bytes of a verified record, never more than ``limit``.

    A delta record needs ``base``: the decoded payload of the run's previous record.
    """
    if header.raw_len > limit:
        raise CorruptRecord(
            run_id, index, f"payload of {header.raw_len} bytes exceeds max_record_size {limit}"
        )
    body = memoryview(record)[HEADER_SIZE:]
    if header.codec == CODEC_RAW:
        if len(body) != header.raw_len:
            raise CorruptRecord(run_id, index, "payload length does not match header")
        return bytes(body)
    try:
        if zstandard.frame_content_size(body) != header.raw_len:
            raise CorruptRecord(run_id, index, "compressed frame size does not match header")
        if header.codec == CODEC_DELTA:
            if base is None:
                raise CorruptRecord(run_id, index, "delta record without its base")
            dictionary = zstandard.ZstdCompressionDict(
                base, dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
            dctx = zstandard.ZstdDecompressor(dict_data=dictionary)
        else:
            dctx = _dctx()
        payload = dctx.decompress(body, max_output_size=header.raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptRecord(run_id, index, f"decompression failed: {exc}") from None
    if len(payload) != header.raw_len:
        raise CorruptRecord(run_id, index, "decoded length does not match header")
    return payload


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
    if type_ is None:
        try:
            out = _UNTYPED.decode(payload)
        except msgspec.DecodeError as exc:
            raise CorruptRecord(run_id, index, f"payload does not decode: {exc}") from None
        return out.node, out.metadata, out.state
    dec = decoder_for(type_)
    try:
        out = dec.decode(payload)
    except msgspec.ValidationError as exc:
        raise SchemaMismatch(run_id, index, type_, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise CorruptRecord(run_id, index, f"payload does not decode: {exc}") from None
    return out.node, out.metadata, out.state
