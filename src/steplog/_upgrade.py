"""Upgrading an older store's layout in place, once, when it is opened.

Format 1 kept each record inside its run's segment (``S`` run, 0x00, index -> record).
Runs that append in turn then insert into the middle of one another's pages, and LMDB
splits a page in half when it overflows mid-page, so pages stayed about two thirds
full. Format 2 writes records to one store-wide log keyed by seq (``Z`` seq ->
record), always at the end of the B-tree, and the segment maps index -> seq.

The upgrade runs in one write transaction: a crash or an error leaves format 1 whole.
All processes using a store must run a steplog that reads format 2 before it is
upgraded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplog import _keys, _record
from steplog._keys import U64

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]

#: Records moved per cursor pass: bounds the memory the upgrade holds at once.
_CHUNK = 4096


def upgrade_1_to_2(txn: Txn, fresh_seq_base: int) -> int:
    """Move every record of a format-1 store into the log; return how many moved.

    A record keeps the seq its header names, which is store-wide unique. A record too
    damaged to name one, or naming a seq already taken (a damaged header), gets a fresh
    seq above ``fresh_seq_base`` so nothing is lost; ``verify()`` still reports it.
    """
    moved = 0
    fresh = fresh_seq_base
    start = _keys.SEGMENT
    while True:
        chunk: list[tuple[bytes, bytes]] = []
        cur = txn.cursor()
        if cur.set_range(start):
            for key, value in cur:
                if not key.startswith(_keys.SEGMENT):
                    break
                if len(key) == _keys.INDEX_KEY_SIZE and key[9:10] == b"\x00":
                    chunk.append((key, value))
                    if len(chunk) == _CHUNK:
                        break
        if not chunk:
            return moved
        for key, record in chunk:
            seq = _header_seq(record)
            if seq is None or not txn.put(_keys.record_key(seq), record, overwrite=False):
                fresh += 1
                seq = fresh
                txn.put(_keys.record_key(seq), record)
            txn.put(key, U64.pack(seq))
            moved += 1
        start = chunk[-1][0] + b"\x00"


def _header_seq(record: bytes) -> int | None:
    if len(record) < _record.HEADER_SIZE:
        return None
    seq: int = _record.HEADER.unpack_from(record)[5]
    return seq
