"""verify(): damaged records and index disagreements are found, exactly."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import lmdb
import pytest

import steplog
from steplog import _keys, _record


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s"


def _fill(path: Path, runs: int = 3, n: int = 70) -> None:
    rng = random.Random(2)
    with steplog.open(path) as store:
        for r in range(runs):
            msgs: list[str] = []
            for i in range(n):
                msgs.append(" ".join(rng.choice(["alpha", "beta", "gamma"]) for _ in range(200)))
                store.append(
                    f"run{r}", {"msgs": list(msgs), "i": i}, workflow_id="wf", node=f"n{i % 3}"
                )
        store.fork("run0", min(10, n - 1), "kid")


def _raw(path: Path):  # type: ignore[no-untyped-def]
    return lmdb.open(str(path))


def test_a_healthy_store_verifies(path: Path) -> None:
    _fill(path)
    with steplog.open(path) as store:
        report = store.verify()
    assert report.ok and report.runs == 4 and report.records == 211


@pytest.mark.parametrize("how", ["flip", "truncate", "zero"])
def test_verify_lists_exactly_the_damaged_records(path: Path, how: str) -> None:
    _fill(path)
    targets = {(1, 5), (1, 40), (2, 0), (3, 69)}  # (run_no, index); run_no 1..3 = run0..run2
    env = _raw(path)
    with env.begin() as txn:  # where run0's chain after index 5 restarts
        depths = [
            _record.read_header("run0", i, txn.get(_keys.log_key(1, i))).depth for i in range(70)
        ]
    keyframe = next(i for i in range(6, 70) if depths[i] == 0)
    with env.begin(write=True) as txn:
        for run_no, index in targets:
            key = _keys.log_key(run_no, index)
            raw = bytearray(txn.get(key))
            if how == "flip":
                raw[len(raw) // 2] ^= 0x10
            elif how == "truncate":
                raw = raw[: len(raw) // 3]
            else:
                raw = bytearray(len(raw))
            txn.put(key, bytes(raw))
    env.close()
    with steplog.open(path) as store:
        report = store.verify()
        assert sorted(report.damaged) == sorted(
            (f"run{run_no - 1}", index) for run_no, index in targets
        )
        unreadable = {(p.run_id, p.index) for p in report.problems if p.kind == "unreadable"}
        # deltas after a damaged record, up to the next keyframe, cannot decode
        assert 6 < keyframe <= 5 + _record.KEYFRAME_INTERVAL
        assert {("run0", i) for i in range(6, keyframe) if i != 40} <= unreadable
        assert ("run0", keyframe) not in unreadable
        assert all(p.kind in ("damaged", "unreadable") for p in report.problems)
        for run_no, index in targets:
            with pytest.raises(steplog.CorruptRecord) as info:
                store.load(f"run{run_no - 1}", index)
            assert info.value.index == index
        assert store.load("run0", 4) is not None  # before the damage: intact
        assert store.load("run0", keyframe) is not None  # next keyframe: intact
        assert store.load("kid").state["i"] == 10  # the fork is independent


def test_verify_finds_index_disagreements(path: Path) -> None:
    _fill(path, runs=2, n=5)
    with steplog.open(path) as store:
        seq = store._read(lambda txn: store._header(txn, b"run1")).seq
    env = _raw(path)
    with env.begin(write=True) as txn:
        txn.delete(_keys.recent_key(seq))  # run1 vanishes from runs()
        txn.put(_keys.node_key(1, b"ghost", 3), b"")  # a node entry no record backs
        txn.delete(_keys.log_key(2, 4))  # a hole at run1's tail
    env.close()
    with steplog.open(path) as store:
        problems = store.verify().problems
    found = {(p.run_id, p.kind) for p in problems}
    assert ("run1", "index") in found  # recency entry missing
    assert ("run0", "index") in found  # stray node entry
    assert ("run1", "missing") in found
    assert len(problems) >= 3


def test_a_record_whose_depth_breaks_its_chain_is_found_and_still_loads(path: Path) -> None:
    """A delta record whose depth field disagrees with its chain (steplog 0.1.0 could
    write one in a rare batch race) points a load by index at a record that is not a
    keyframe: verify reports it, and loads walk back to the real keyframe instead."""
    _fill(path, runs=1, n=12)
    with steplog.open(path) as store:
        expected = [cp.state for cp in store.history("run0")]
    env = _raw(path)
    with env.begin(write=True) as txn:
        key = _keys.log_key(1, 6)
        record = txn.get(key)
        head = _record.read_header("run0", 6, record)
        assert head.depth >= 2
        fields = list(_record.HEADER.unpack_from(record))
        fields[3] = head.depth - 1  # its keyframe now seems to be a delta record
        fields[4] = 0
        body = record[_record.HEADER_SIZE :]
        raw = _record.HEADER.pack(*fields)
        fields[4] = zlib.crc32(body, zlib.crc32(raw[8:], zlib.crc32(raw[:4])))
        txn.put(key, _record.HEADER.pack(*fields) + body)
    env.close()
    with steplog.open(path, cache_size=0) as store:
        report = store.verify()
        assert [(p.run_id, p.index, p.kind) for p in report.problems] == [("run0", 6, "depth")]
        assert [store.load("run0", i).state for i in range(12)] == expected
        assert [cp.state for cp in store.history("run0")] == expected
