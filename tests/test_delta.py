"""Delta records: chains, keyframes, and their interplay with fork/delete/purge/reopen."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lmdb
import pytest

import steplog
from steplog import _keys, _record

K = _record.KEYFRAME_INTERVAL


def _chat(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["agent", "graph", "token", "reply", "order", "ticket", "refund", "delta"]
    return [
        {
            "role": "user" if i % 2 else "assistant",
            "content": " ".join(rng.choice(words) + str(rng.randint(0, 999)) for _ in range(60)),
        }
        for i in range(n)
    ]


def _states(n: int) -> list[dict[str, Any]]:
    msgs = _chat(n)
    return [{"messages": msgs[: i + 1], "step": i, "flag": i % 3 == 0} for i in range(n)]


def _depths(path: Path, run_no: int, n: int) -> list[int]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = []
            for i in range(n):
                raw = txn.get(_keys.log_key(run_no, i))
                out.append(_record.read_header("r", i, raw).depth)
            return out
    finally:
        env.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s"


def test_growing_state_is_stored_as_deltas_with_periodic_keyframes(path: Path) -> None:
    states = _states(2 * K + 5)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
    depths = _depths(path, 1, len(states))
    assert depths[0] == 0
    assert max(depths) == K - 1
    assert all(d == 0 for i, d in enumerate(depths) if i % K == 0)
    assert all(d == i % K for i, d in enumerate(depths))


def test_every_index_loads_exactly_cold_and_warm(path: Path) -> None:
    states = _states(2 * K + 5)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        for i in random.Random(1).sample(range(len(states)), len(states)):
            assert store.load("r", i).state == states[i]
    with steplog.open(path, cache_size=0) as store:  # no cache: full chain walks
        for i in (len(states) - 1, K - 1, K, K + 1, 3):
            assert store.load("r", i).state == states[i]
        assert [c.state for c in store.history("r")] == states
        assert [c.state for c in store.history("r", start=K + 3)] == states[K + 3 :]


def test_delta_records_are_much_smaller_than_keyframes(path: Path) -> None:
    states = _states(K)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        sizes = [len(txn.get(_keys.log_key(1, i))) for i in range(K)]
    env.close()
    full_last = len(
        _record.pack(
            _record.encode_payload("r", None, {}, states[-1]),
            seq=1,
            created_ns=0,
            status=steplog.Status.RUNNING,
        )[0]
    )
    assert max(sizes[1:]) * 5 < full_last


def test_fork_from_mid_chain_starts_with_a_keyframe(path: Path) -> None:
    states = _states(K // 2)
    with steplog.open(path) as store:
        for st in states:
            store.append("src", st)
        store.fork("src", 5, "kid", overrides={"step": -1})
        store.append("kid", {**states[5], "step": 99})
        assert store.load("kid", 0).state == {**states[5], "step": -1}
        assert store.load("kid").state == {**states[5], "step": 99}
    assert _depths(path, 2, 2) == [0, 1]
    with steplog.open(path, cache_size=0) as store:
        store.purge("src")
        assert [c.state["step"] for c in store.history("kid")] == [-1, 99]


def test_delete_latest_then_append_rebuilds_the_chain(path: Path) -> None:
    states = _states(10)
    with steplog.open(path) as store:
        for st in states[:6]:
            store.append("r", st)
        store.delete_latest("r")
        store.delete_latest("r")
        for st in states[6:]:
            store.append("r", st)
        expect = states[:4] + states[6:]
        assert [c.state for c in store.history("r")] == expect
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == expect
        assert store.load("r", 4).state == states[6]


def test_purge_and_reuse_of_an_id_starts_a_fresh_chain(path: Path) -> None:
    states = _states(6)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        store.purge("r")
        store.append("r", {"fresh": True})
        store.append("r", {"fresh": False})
        assert [c.state for c in store.history("r")] == [{"fresh": True}, {"fresh": False}]


def test_another_process_writing_behind_our_cache_is_never_a_stale_base(path: Path) -> None:
    import json
    import subprocess
    import sys

    states = _states(12)
    other = (
        "import json, sys, steplog\n"
        "states = json.loads(sys.stdin.read())\n"
        "with steplog.open(sys.argv[1]) as s:\n"
        "    s.delete_latest('r')\n"
        "    for st in states: s.append('r', st)\n"
    )
    with steplog.open(path) as store:
        for st in states[:6]:
            store.append("r", st)  # our cache now holds #5
        subprocess.run(
            [sys.executable, "-c", other, str(path)],
            input=json.dumps(states[5:9]),
            text=True,
            check=True,
        )
        for st in states[9:]:
            store.append("r", st)  # must delta against the other process's #8
        assert [c.state for c in store.history("r")] == states
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == states


def test_a_keyframe_is_stored_when_the_delta_is_not_smaller(path: Path) -> None:
    small = [{"n": i} for i in range(4)]  # a delta frame's overhead exceeds these payloads
    with steplog.open(path) as store:
        for st in small:
            store.append("r", st)
        assert [c.state for c in store.history("r")] == small
    assert _depths(path, 1, 4) == [0, 0, 0, 0]
    noise = random.Random(5).randbytes(400)
    record, depth = _record.pack(
        noise, seq=1, created_ns=0, status=steplog.Status.RUNNING, base=noise[::-1], depth=1
    )
    assert depth == 0 and record[1] == _record.CODEC_RAW


def test_history_survives_tail_rewrite_between_chunks(path: Path) -> None:
    from steplog import store as store_module

    states = _states(8)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        old = store_module.HISTORY_CHUNK
        store_module.HISTORY_CHUNK = 4
        try:
            it = store.history("r")
            first = [next(it) for _ in range(4)]
            for _ in range(5):
                store.delete_latest("r")
            store.append("r", {"replaced": 3})
            store.append("r", {"replaced": 4})
            rest = list(it)
        finally:
            store_module.HISTORY_CHUNK = old
    assert [c.state for c in first] == states[:4]
    assert [c.state for c in rest] == [{"replaced": 4}]


def test_append_many_and_batches_store_deltas(path: Path) -> None:
    states = _states(K)
    with steplog.open(path) as store:
        store.append_many("r", states)
        with store.batch() as b:
            for st in _states(5):
                b.append("b", st)
        assert [c.state for c in store.history("r")] == states
    assert _depths(path, 1, K) == list(range(K))
    assert _depths(path, 2, 5) == list(range(5))


def test_batch_can_replace_a_run_atomically(path: Path) -> None:
    with steplog.open(path) as store:
        store.append_many("r", [{"v": i} for i in range(10)])
        with store.batch() as b:
            b.purge("r")
            b.append("r", {"v": 9})
            b.purge("ghost", missing_ok=True)
        assert [c.state for c in store.history("r")] == [{"v": 9}]
        with pytest.raises(steplog.RunNotFound):
            with store.batch() as b:
                b.purge("r")
                b.purge("ghost")
        assert [c.state for c in store.history("r")] == [{"v": 9}]
        assert store.verify().ok
