"""Damaged and foreign stores: every call fails with a steplog error or works, undamaged
data still reads, verify() reports what is wrong and never crashes, and a damaged run
can be purged."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest

import steplog
from steplog import _keys, _record
from steplog._keys import U64
from steplog.store import _HEADER_DECODER, _HEADER_ENCODER


def _header(txn: Any, **fields: Any) -> None:
    hdr = _HEADER_DECODER.decode(txn.get(_keys.header_key(1)))
    txn.put(_keys.header_key(1), _HEADER_ENCODER.encode(msgspec.structs.replace(hdr, **fields)))


DAMAGE: list[tuple[str, Callable[[Any], Any]]] = [
    ("id entry of 2 bytes", lambda t: t.put(_keys.id_key(b"r1"), b"\x00\x01")),
    ("recency entry of 3 bytes", lambda t: t.put(_keys.recent_key(1), b"abc")),
    ("recency key of 2 bytes", lambda t: t.put(b"G\x01", U64.pack(1))),
    ("workflow entry of 2 bytes", lambda t: t.put(_keys.workflow_key(b"wf", 1), b"zz")),
    ("workflow key without seq", lambda t: t.put(b"Wx", U64.pack(1))),
    ("children entry not UTF-8", lambda t: t.put(_keys.child_key(1, 0, 77), b"\xff")),
    ("children key of 3 bytes", lambda t: t.put(b"C\x00\x01", b"x")),
    ("segment key of 2 bytes", lambda t: t.put(b"S\x00", b"x")),
    ("short record key", lambda t: t.put(_keys.log_prefix(1) + b"\x01", b"x")),
    ("run counter of 1 byte", lambda t: t.put(_keys.META_NEXT_RUN_NO, b"\x01")),
    ("run counter missing", lambda t: t.delete(_keys.META_NEXT_RUN_NO)),
    ("header status 99", lambda t: _header(t, status=99)),
    ("header length 2**40", lambda t: _header(t, length=2**40)),
    ("header truncated", lambda t: t.put(_keys.header_key(1), t.get(_keys.header_key(1))[:5])),
    ("header missing", lambda t: t.delete(_keys.header_key(1))),
    ("record 1 missing", lambda t: t.delete(_keys.log_key(1, 1))),
    ("stray meta key", lambda t: t.put(b"Mjunk", b"x")),
    ("key in no table", lambda t: t.put(b"X-unknown", b"x")),
]

CALLS: list[Callable[[steplog.Store], Any]] = [
    lambda s: s.load("r1"),
    lambda s: [s.load("r1", i) for i in range(3)],
    lambda s: list(s.history("r1")),
    lambda s: s.run("r1"),
    lambda s: s.runs(),
    lambda s: s.runs("wf"),
    lambda s: s.latest("wf"),
    lambda s: s.children("r1"),
    lambda s: s.lineage("r1"),
    lambda s: s.append("r1", {"i": 3}),
    lambda s: s.fork("r1", 0, "kid"),
    lambda s: s.delete_latest("r1"),
]


def _damaged(path: Path, damage: Callable[[Any], Any]) -> None:
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r1", {"i": i}, workflow_id="wf")
        store.append("other", {"o": 1})
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        damage(txn)
    env.close()


@pytest.mark.parametrize(("name", "damage"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_store_fails_only_with_steplog_errors(
    tmp_path: Path, name: str, damage: Callable[[Any], Any]
) -> None:
    path = tmp_path / "s"
    _damaged(path, damage)
    with steplog.open(path) as store:
        report = store.verify()  # never raises
        assert not report.ok, f"verify missed: {name}"
        for call in CALLS:
            try:
                call(store)
            except steplog.StepLogError:
                pass
        assert store.load("other").state == {"o": 1}  # the undamaged run still reads
        store.purge("r1")  # a damaged run can always be removed
        store.append("new", {"n": 1})
        assert store.load("new").state == {"n": 1} and store.load("other").state == {"o": 1}


def test_history_raises_at_a_missing_record_rather_than_skipping_it(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _damaged(path, lambda t: t.delete(_keys.log_key(1, 1)))
    with steplog.open(path) as store:
        got = []
        with pytest.raises(steplog.CorruptRecord) as info:
            for cp in store.history("r1"):
                got.append(cp.index)
        assert got == [0] and info.value.index == 1


def test_a_lost_run_counter_never_makes_a_new_run_overwrite_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _damaged(path, lambda t: t.delete(_keys.META_NEXT_RUN_NO))
    with steplog.open(path) as store:
        store.append("newer", {"n": 1})
        assert [store.load("r1", i).state for i in range(3)] == [{"i": i} for i in range(3)]
        assert store.load("other").state == {"o": 1}
        assert store.verify().ok  # creating a run rewrote the counter past every run in use


def test_a_run_with_a_damaged_header_is_left_out_of_listings_and_can_be_purged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    _damaged(path, lambda t: t.put(_keys.header_key(1), b"\x01"))
    with steplog.open(path) as store:
        assert [r.run_id for r in store.runs()] == ["other"]
        with pytest.raises(steplog.CorruptRecord):
            store.load("r1")
        assert store.purge("r1") == 3
        assert store.verify().ok and store.run("r1") is None


@pytest.mark.parametrize("content", [b"", b"not an lmdb file" * 600])
def test_a_directory_whose_data_file_is_not_lmdb_is_not_a_store_and_is_left_alone(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(content)
    if not content:
        with steplog.open(path) as store:  # an empty file: a store not yet made
            store.append("r", 1)
        return
    with pytest.raises(steplog.NotAStore):
        steplog.open(path)
    assert sorted(p.name for p in path.iterdir()) == ["data.mdb"]
    assert (path / "data.mdb").read_bytes() == content


def test_verify_finds_index_entries_that_name_the_wrong_run(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with steplog.open(path) as store:
        store.append("r1", 1)
        store.fork("r1", 0, "kid")
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(_keys.id_key(b"alias"), txn.get(_keys.id_key(b"r1")))
        txn.put(_keys.child_key(1, 0, 2), b"somebody-else")
    env.close()
    with steplog.open(path) as store:
        details = [p.detail for p in store.verify().problems]
        assert any("names run #1" in d for d in details)
        assert any("stale children entry" in d for d in details)


def test_a_stream_record_that_inflates_past_its_declared_length_is_refused_early(
    tmp_path: Path,
) -> None:
    """A record with a valid checksum whose zstd blocks expand far beyond its declared
    length (a decompression bomb: 3-byte RLE blocks each worth a whole window) is
    CorruptRecord, found before more than about one block beyond the declared length
    is ever inflated."""
    path = tmp_path / "s"
    state = {"text": "steplog " * 200}
    with steplog.open(path) as store:
        store.append("r1", state)
        store.append("r1", {**state, "more": 1})
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        first = _record.read_header("r1", 0, txn.get(_keys.log_key(1, 0)))
        assert first.codec == _record.CODEC_STREAM_START  # the chain under attack
        old = _record.read_header("r1", 1, txn.get(_keys.log_key(1, 1)))
        assert old.codec == _record.CODEC_STREAM_NEXT
        block = 1 << _record.stream_window_log(first.raw_len)
        rle = ((block << 3) | (1 << 1)).to_bytes(3, "little") + b"x"  # type 1: RLE
        bomb = _record.Body(_record.CODEC_STREAM_NEXT, rle * 4000, 1, old.raw_len)
        txn.put(
            _keys.log_key(1, 1),
            _record.frame(bomb, seq=old.seq, created_ns=old.created_ns, status=old.status),
        )
    env.close()
    assert 4000 * block > 100_000_000  # what an unbounded decoder would allocate
    with steplog.open(path) as store:
        tracemalloc.start()
        try:
            with pytest.raises(steplog.CorruptRecord):
                store.load("r1")
            with pytest.raises(steplog.CorruptRecord):
                store.load("r1", 1)
            with pytest.raises(steplog.CorruptRecord):
                list(store.history("r1"))
            assert not store.verify().ok
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * block + 5_000_000
        assert store.load("r1", 0).state == state  # the record before it still reads
