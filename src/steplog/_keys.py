"""Key encodings: the whole store is one LMDB B-tree, split into tables by a tag byte.

Every key is built so that byte order equals logical order and no two logical keys
share an encoding: integers are fixed-width big-endian, and variable-length ids are
NUL-terminated (ids may not contain NUL), so one id's range never contains another's.
A run's records, header and node entries share one key range (its *segment*), so an
append dirties the run's tail page rather than one page per index. See
docs/ARCHITECTURE.md for the table.
"""

from __future__ import annotations

import struct

U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_U64X3 = struct.Struct(">QQQ")

#: Longest id (run, workflow or node) in UTF-8 bytes. The longest key is
#: 1 + 8 + 1 + 480 + 1 + 8 = 499 bytes (a node entry), under LMDB's 511-byte key limit.
MAX_ID_BYTES = 480

SEP = b"\x00"

# table tags
META = b"M"
IDS = b"I"
SEGMENT = b"S"
WORKFLOWS = b"W"
RECENT = b"G"
CHILDREN = b"C"

# within a segment
_RECORD = b"\x00"
_HEADER = b"\x01"
_NODE = b"\x02"

META_FORMAT = META + b"format"
META_NEXT_RUN_NO = META + b"next_run_no"


def id_key(run_id: bytes) -> bytes:
    """``I`` run id -> run number (u64)."""
    return IDS + run_id


def segment_prefix(run_no: int) -> bytes:
    """Every key of one run: its records, header and node entries."""
    return SEGMENT + U64.pack(run_no)


def log_prefix(run_no: int) -> bytes:
    return SEGMENT + U64.pack(run_no) + _RECORD


def log_key(run_no: int, index: int) -> bytes:
    """``S`` run number, 0x00, index -> record."""
    return SEGMENT + U64.pack(run_no) + _RECORD + U64.pack(index)


LOG_KEY_SIZE = 1 + 8 + 1 + 8


def log_index(key: bytes) -> int:
    index: int = U64.unpack_from(key, 10)[0]
    return index


def header_key(run_no: int) -> bytes:
    """``S`` run number, 0x01 -> run header."""
    return SEGMENT + U64.pack(run_no) + _HEADER


def nodes_prefix(run_no: int) -> bytes:
    """Every node entry of one run."""
    return SEGMENT + U64.pack(run_no) + _NODE


def node_prefix(run_no: int, node: bytes) -> bytes:
    """``S`` run number, 0x02, node, NUL, index -> streak length: one node's checkpoints.

    An entry at ``index`` stands for the node's checkpoints ``index`` ..
    ``index + length - 1`` (a *streak*: consecutive records that name the node). The
    value is the length as a minimal big-endian unsigned integer, empty for 1 (the only
    value format 1 writes)."""
    return SEGMENT + U64.pack(run_no) + _NODE + node + SEP


def node_key(run_no: int, node: bytes, index: int) -> bytes:
    return node_prefix(run_no, node) + U64.pack(index)


#: The longest streak value: 8 bytes, as an index.
MAX_STREAK_BYTES = 8


def streak_value(length: int) -> bytes:
    """A node entry's value for a streak of ``length`` (>= 1) checkpoints."""
    return b"" if length == 1 else length.to_bytes((length.bit_length() + 7) // 8, "big")


def streak_length(value: bytes) -> int:
    """The streak length a node entry's value holds (0 for a malformed value: an
    entry that stands for nothing; ``verify`` reports it)."""
    if not value:
        return 1
    length = int.from_bytes(value, "big")
    return length if length >= 2 and len(value) <= MAX_STREAK_BYTES and value[0] else 0


def workflow_prefix(workflow: bytes) -> bytes:
    """``W`` workflow, NUL, seq -> run number; a workflow's newest run is last."""
    return WORKFLOWS + workflow + SEP


def workflow_key(workflow: bytes, seq: int) -> bytes:
    return WORKFLOWS + workflow + SEP + U64.pack(seq)


def recent_key(seq: int) -> bytes:
    """``G`` seq -> run number, over all runs; the newest is last."""
    return RECENT + U64.pack(seq)


def child_prefix(parent_run_no: int, parent_index: int | None = None) -> bytes:
    """``C`` parent run number, parent index, child run number -> child run id."""
    if parent_index is None:
        return CHILDREN + U64.pack(parent_run_no)
    return CHILDREN + _U64X2.pack(parent_run_no, parent_index)


def child_key(parent_run_no: int, parent_index: int, child_run_no: int) -> bytes:
    return CHILDREN + _U64X3.pack(parent_run_no, parent_index, child_run_no)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
