"""Reaching past the API into LMDB, as tests that damage or inspect records must."""

from __future__ import annotations

from typing import Any

from steplog import _keys


def record_key(txn: Any, run_no: int, index: int) -> bytes:
    """The log key of run ``run_no``'s record ``index`` (its segment maps index -> seq)."""
    ref = txn.get(_keys.index_key(run_no, index))
    assert ref is not None, f"run #{run_no} has no record {index}"
    return bytes(_keys.LOG + ref)


def record(txn: Any, run_no: int, index: int) -> bytes:
    raw = txn.get(record_key(txn, run_no, index))
    assert raw is not None
    return bytes(raw)
