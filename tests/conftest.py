"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lmdb
import msgspec
import pytest

from steplog import _keys

RewriteHeader = Callable[..., None]


@pytest.fixture
def rewrite_header() -> RewriteHeader:
    """``rewrite_header(path, hdr, **changes)`` stores the run header ``hdr`` with
    ``changes`` into the closed store at ``path``, as damage would."""

    def rewrite(path: Path, hdr: object, **changes: object) -> None:
        env = lmdb.open(str(path))
        with env.begin(write=True) as txn:
            wrong = msgspec.structs.replace(hdr, **changes)  # type: ignore[type-var]
            txn.put(_keys.header_key(wrong.run_no), msgspec.msgpack.encode(wrong))
        env.close()

    return rewrite
