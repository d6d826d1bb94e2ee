"""Key encodings of the LMDB named databases.

Every key is built so that byte order equals logical order and no two logical keys
share an encoding: integers are fixed-width big-endian, and variable-length ids are
NUL-terminated (ids may not contain NUL), so one id is never a prefix of another's
key range. See docs/ARCHITECTURE.md for the table of databases.
"""

from __future__ import annotations

import struct

U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_U64X3 = struct.Struct(">QQQ")

#: Longest id (run, workflow or node) in UTF-8 bytes. The longest key is
#: 8 + id + 1 + 8 = 273 bytes, well under LMDB's 511-byte key limit.
MAX_ID_BYTES = 256

SEP = b"\x00"
_AFTER_SEP = b"\x01"

# meta database keys
META_FORMAT = b"format"
META_NEXT_RUN_NO = b"next_run_no"


def log_key(run_no: int, index: int) -> bytes:
    """``log``: (run number, index) -> record. A run's records are one contiguous range."""
    return _U64X2.pack(run_no, index)


def log_prefix(run_no: int) -> bytes:
    return U64.pack(run_no)


def split_log_key(key: bytes) -> tuple[int, int]:
    run_no, index = _U64X2.unpack(key)
    return run_no, index


def node_prefix(run_no: int, node: bytes) -> bytes:
    """``nodes``: (run number, node, index) -> empty; this prefix selects one node of one run."""
    return U64.pack(run_no) + node + SEP


def node_key(run_no: int, node: bytes, index: int) -> bytes:
    return node_prefix(run_no, node) + U64.pack(index)


def workflow_prefix(workflow: bytes) -> bytes:
    """``workflows``: (workflow, recency seq) -> run id; newest run of a workflow is last."""
    return workflow + SEP


def workflow_key(workflow: bytes, seq: int) -> bytes:
    return workflow + SEP + U64.pack(seq)


def recent_key(seq: int) -> bytes:
    """``recent``: recency seq -> run id, over all runs; newest is last."""
    return U64.pack(seq)


def child_prefix(parent_run_no: int, parent_index: int | None = None) -> bytes:
    """``children``: (parent run number, parent index, child run number) -> child run id."""
    if parent_index is None:
        return U64.pack(parent_run_no)
    return _U64X2.pack(parent_run_no, parent_index)


def child_key(parent_run_no: int, parent_index: int, child_run_no: int) -> bytes:
    return _U64X3.pack(parent_run_no, parent_index, child_run_no)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
