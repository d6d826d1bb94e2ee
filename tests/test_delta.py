"""Delta records: chains, keyframes, and their interplay with fork/delete/purge/reopen."""

from __future__ import annotations

import random
import statistics
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
    sizes = [len(_record.encode_payload("r", None, {}, st)) for st in states]
    assert depths[0] == 0
    # chains are never longer than their states' size allows: K records, twice as
    # many once the state reaches LONG_CHAIN_BYTES (a keyframe then costs more)
    assert all(d < _record.interval(n) for d, n in zip(depths, sizes, strict=True))
    # each record is a keyframe or the next link of the chain before it
    assert all(d in (0, depths[i - 1] + 1) for i, d in enumerate(depths) if i)
    # a keyframe every K records, plus one where the growing state outgrew its
    # stream's window
    assert depths.count(0) <= len(states) // K + 2


@pytest.mark.parametrize("size", [2_000, 40_000])
def test_a_chain_holds_as_many_records_as_its_state_size_allows(path: Path, size: int) -> None:
    rng = random.Random(size)
    text = " ".join(str(rng.random()) for _ in range(size // 19))
    k = _record.interval(len(_record.encode_payload("r", None, {}, {"step": 0, "text": text})))
    assert k == (K if size < _record.LONG_CHAIN_BYTES else _record.LONG_KEYFRAME_INTERVAL)
    n = 2 * k + 5
    with steplog.open(path) as store:
        for i in range(n):
            store.append("r", {"step": i, "text": text})
        assert store.load("r", k + 3).state == {"step": k + 3, "text": text}
    depths = _depths(path, 1, n)
    assert max(depths) == k - 1
    assert [i for i, d in enumerate(depths) if d == 0] == [0, k, 2 * k]


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
    deltas = sizes[1:]
    # on average a small fraction of a keyframe; never as much as 3/4 of one (a delta
    # that large is replaced by a keyframe). A stream block right after zstd's input
    # buffer wraps matches less well, hence average, not max.
    assert sum(deltas) / len(deltas) * 10 < full_last
    assert max(deltas) < full_last * _record.DELTA_MAX_SHARE


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


def test_a_state_that_outgrows_its_stream_window_starts_a_wider_stream(path: Path) -> None:
    states = _states(K)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
    depths = _depths(path, 1, K)
    restart = depths.index(0, 1)  # the first state too big for the keyframe's window
    first = len(_record.encode_payload("r", None, {}, states[0]))
    window = _record.Stream(first).window
    assert len(_record.encode_payload("r", None, {}, states[restart])) * 2 > window
    assert depths == list(range(restart)) + list(range(K - restart))
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        codecs = [txn.get(_keys.log_key(1, i))[1] for i in range(K)]
    env.close()
    assert _record.CODEC_DELTA not in codecs  # never the costlier dictionary deltas
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == states


def test_an_incompressible_state_after_a_stream_is_a_keyframe(path: Path) -> None:
    rng = random.Random(9)
    states = [{"text": "abc " * 500}] + [{"blob": rng.randbytes(3000)} for _ in range(3)]
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == states
    assert _depths(path, 1, 4) == [0, 0, 0, 0]


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
    depths = _depths(path, 1, K)
    # one chain, restarted at most once where the growing state outgrew its window
    assert all(d in (0, depths[i - 1] + 1) for i, d in enumerate(depths) if i)
    assert depths.count(0) <= 2
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


# ---------------------------------------------------------------- stream chains


def _codecs(path: Path, run_no: int, n: int) -> list[int]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [txn.get(_keys.log_key(run_no, i))[1] for i in range(n)]
    finally:
        env.close()


def test_consecutive_appends_continue_one_zstd_stream(path: Path) -> None:
    msgs = _chat(10)
    states = [{"messages": msgs, "step": i, "flag": i % 3 == 0} for i in range(K + 3)]
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        store.append_many("m", states[:5])
    codecs = _codecs(path, 1, K + 3)
    start, nxt = _record.CODEC_STREAM_START, _record.CODEC_STREAM_NEXT
    assert codecs[0] == start and codecs[K] == start
    assert codecs[1:K] == [nxt] * (K - 1)
    assert _codecs(path, 2, 5) == [start, nxt, nxt, nxt, nxt]  # append_many chains too
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == states
        assert [store.load("r", i).state for i in range(K + 3)] == states


def test_a_refused_append_never_breaks_the_stream(path: Path) -> None:
    # The refused append compressed its block (advancing the stream) before the
    # commit refused it; the next append must not follow that phantom block.
    states = _states(10)
    with steplog.open(path) as store:
        for st in states[:4]:
            store.append("r", st)
        with pytest.raises(steplog.IndexConflict):
            store.append("r", {"phantom": True}, expected_index=99)
        with pytest.raises(steplog.WorkflowMismatch):
            store.append("r", {"phantom": True}, workflow_id="other")
        for st in states[4:]:
            store.append("r", st)
        assert [c.state for c in store.history("r")] == states
    with steplog.open(path, cache_size=0) as store:
        assert [store.load("r", i).state for i in range(10)] == states


def test_threads_appending_to_one_run_get_exact_records(path: Path) -> None:
    # Appends racing for one run's stream: whoever loses writes a keyframe or a
    # dictionary delta, and every index decodes to exactly what its append wrote.
    import threading

    written: dict[int, Any] = {}
    lock = threading.Lock()
    base = _states(40)

    def worker(w: int) -> None:
        for i in range(40):
            state = {**base[i], "writer": w}
            cp = store.append("r", state)
            with lock:
                written[cp.index] = state

    with steplog.open(path) as store:
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = [written[i] for i in range(240)]
        assert [c.state for c in store.history("r")] == expected
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == expected
        rng = random.Random(2)
        for i in rng.sample(range(240), 40):
            assert store.load("r", i).state == expected[i]
        assert store.verify().ok


def test_states_too_large_for_a_stream_use_dictionary_deltas(path: Path) -> None:
    rng = random.Random(4)
    blob = rng.randbytes(_record.STREAM_MAX_PAYLOAD + 1000).hex()[: _record.STREAM_MAX_PAYLOAD]
    states = [{"blob": blob, "step": i} for i in range(3)]
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        assert [c.state for c in store.history("r")] == states
    assert _codecs(path, 1, 3) == [_record.CODEC_ZSTD, _record.CODEC_DELTA, _record.CODEC_DELTA]


def test_a_damaged_stream_block_fails_it_and_its_followers_only(path: Path) -> None:
    states = _states(8)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
    assert _codecs(path, 1, 8)[3] == _record.CODEC_STREAM_NEXT
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        key = _keys.log_key(1, 3)
        raw = bytearray(txn.get(key))
        raw[-2] ^= 0xFF
        txn.put(key, bytes(raw))
    env.close()
    with steplog.open(path, cache_size=0) as store:
        assert [store.load("r", i).state for i in range(3)] == states[:3]
        for i in range(3, 8):
            with pytest.raises(steplog.CorruptRecord):
                store.load("r", i)
        report = store.verify()
        assert not report.ok
        assert {p.index for p in report.problems} == set(range(3, 8))


def test_more_hot_runs_than_compressors_fit_keep_delta_chains(path: Path) -> None:
    # 24 interleaved runs, room for ~3 live compressors: runs that lose theirs go on
    # with dictionary deltas (not keyframes, not re-reading their chains).
    runs, steps = 24, 12
    msgs = _chat(6)
    states = [{"messages": msgs, "step": i} for i in range(steps)]
    with steplog.open(path, cache_size=2 << 20) as store:
        for i in range(steps):
            for r in range(runs):
                store.append(f"r{r}", {**states[i], "run": r})
        cache = store._cache
        assert cache._stream_bytes <= cache._max_streams
        for r in range(runs):
            assert [c.state for c in store.history(f"r{r}")] == [{**st, "run": r} for st in states]
    codecs = [c for r in range(runs) for c in _codecs(path, r + 1, steps)]
    keyframes = codecs.count(_record.CODEC_STREAM_START) + codecs.count(_record.CODEC_ZSTD)
    assert keyframes <= runs * 2  # the first record of each run, and rare restarts
    assert codecs.count(_record.CODEC_DELTA) > runs * steps // 2


def _mixed(n: int) -> list[dict[str, Any]]:
    """A growing state with a small record after each (LangGraph: a checkpoint, then
    its pending writes)."""
    out: list[dict[str, Any]] = []
    for i, st in enumerate(_states(n)):
        out += [st, {"writes": st["messages"][-1]["content"][:200], "step": i}]
    return out


def test_small_records_between_large_ones_do_not_shorten_the_chain(path: Path) -> None:
    states = _mixed(K + 10)  # 2K + 20 records, every other one small
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        for i in random.Random(2).sample(range(len(states)), 40):
            assert store.load("r", i).state == states[i]
    depths = _depths(path, 1, len(states))
    sizes = [len(_record.encode_payload("r", None, {}, st)) for st in states]
    assert all(s < _record.DELTA_MIN_BYTES for s in sizes[1::2])
    assert all(s >= _record.DELTA_MIN_BYTES for s in sizes[2::2])
    # chains run past K records: small ones are not counted ...
    assert max(depths) > K
    assert max(depths) < _record.MAX_CHAIN
    # ... but hold at most K large records, so a load decodes at most K large payloads
    start = 0
    for i, d in enumerate(depths):
        if d == 0:
            start = i
        assert sum(1 for s in sizes[start : i + 1] if s >= _record.DELTA_MIN_BYTES) <= K
    # the large records stay stream blocks (the small one between two large ones does
    # not break the stream): a few keyframes, where a state outgrew its window
    codecs = _codecs(path, 1, len(states))
    assert codecs.count(_record.CODEC_STREAM_START) <= 4
    assert _record.CODEC_DELTA not in codecs
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == states


def test_a_chain_of_small_records_keeps_its_short_interval(path: Path) -> None:
    small = [{"n": i, "note": "x" * (100 + i)} for i in range(40)]
    with steplog.open(path) as store:
        for st in small:
            store.append("r", st)
    assert max(_depths(path, 1, len(small))) == _record.SMALL_KEYFRAME_INTERVAL - 1


def test_the_large_record_before_a_small_latest_one_loads_from_the_cache(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = _mixed(20)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        # the latest record is small; the large one before it is held with it

        def no_walk(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("decoded a chain from disk")

        monkeypatch.setattr(store, "_walk", no_walk)
        assert store.load("r", len(states) - 2).state == states[-2]
        assert store.load("r").state == states[-1]
        store.append("r", {"writes": "again", "step": 99})  # a second small record
        assert store.load("r", len(states) - 2).state == states[-2]
        monkeypatch.undo()
        assert store.load("r", len(states) - 4).state == states[-4]


def test_a_stream_counts_the_large_payload_behind_a_small_one_against_its_window() -> None:
    stream = _record.Stream(8 << 10)  # a 32 KiB window
    assert stream.window == 32 << 10
    stream.first(b"a" * (14 << 10))
    assert stream.follow(stream.pos, b"b" * 300) is not None
    # the next large payload would push the 14 KiB one (its base) out of the window,
    # although it and the small one before it fit
    assert not stream.fits(20 << 10)
    assert stream.fits(16 << 10)
    assert stream.fits(300)


def test_chains_of_very_large_states_are_bounded_in_bytes_decoded(path: Path) -> None:
    assert _record.interval(2 << 20) * (2 << 20) <= _record.CHAIN_MAX_BYTES
    rng = random.Random(5)
    text = " ".join(str(rng.random()) for _ in range((1 << 20) // 19))  # ~1 MiB
    size = len(_record.encode_payload("r", None, {}, {"step": 0, "text": text}))
    k = _record.interval(size)
    assert k * size <= _record.CHAIN_MAX_BYTES < _record.LONG_KEYFRAME_INTERVAL * size
    with steplog.open(path, max_record_size=4 << 20) as store:
        for i in range(k + 3):
            store.append("r", {"step": i, "text": text})
    depths = _depths(path, 1, k + 3)
    assert max(depths) == k - 1 and depths[k] == 0


def test_a_mid_size_state_that_repeats_its_predecessor_costs_tens_of_bytes(path: Path) -> None:
    rng = random.Random(11)
    words = "the agent asked the customer about refunds shipping delays and next steps".split()
    notes = " ".join(rng.choice(words) for _ in range(3500))
    assert 15_000 < len(notes) < _record.LONG_CHAIN_BYTES
    scores = [rng.random() for _ in range(8)]
    n = 40
    with steplog.open(path) as store:
        for i in range(n):
            scores[i % 8] = i / 7
            state = {"step": i, "status": f"node-{i % 5}", "scores": scores, "notes": notes}
            store.append("r", state)
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            records = [txn.get(_keys.log_key(1, i)) for i in range(n)]
    finally:
        env.close()
    blocks = [len(r) - _record.HEADER_SIZE for r in records if r[1] == _record.CODEC_STREAM_NEXT]
    assert len(blocks) == n - 1
    # one long match for the unchanged text, a few bytes for the step and status
    assert statistics.mean(blocks) < 40


def test_a_batch_whose_base_moved_before_its_commit_keeps_exact_chains(path: Path) -> None:
    """Two appends of a batch are compressed ahead as a chain; a plain append to the
    same run commits first, so the commit recompresses both. The second record must
    be written with the depth of its recompressed base, not of the prepared one."""
    rng = random.Random(5)
    big = [{"tag": t, "text": f"chunk-{t} " * 200_000} for t in range(4)]  # dictionary deltas
    y = {"tag": 9, "text": " ".join(f"w{rng.randrange(3000)}" for _ in range(20_000))}
    with steplog.open(path) as store:
        store.append("A", big[0])
        store.append("A", big[1])
        with store.batch() as b:
            b.append("A", big[2])
            b.append("A", big[3])
            store.append("A", y)  # commits before the batch
    expected = [big[0], big[1], y, big[2], big[3]]
    with steplog.open(path) as store:
        assert store.verify().ok
        assert [store.load("A", i).state for i in range(5)] == expected


def test_an_entry_too_large_to_cache_still_evicts_the_runs_old_entry() -> None:
    from steplog._cache import Latest, LatestCache

    cache = LatestCache(8000)
    cache.put("r", Latest(0, 1, 0, b"x" * 100))
    cache.put("r", Latest(1, 2, 1, b"y" * 5000))  # over the per-entry budget: not kept
    assert cache.get("r") is None


def test_stream_records_of_several_zstd_blocks_read_back_exactly(path: Path) -> None:
    """Payloads over one zstd block (128 KiB) make stream records of several blocks,
    which a read inflates block by block."""
    rng = random.Random(5)
    words = [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randrange(3, 9))) for _ in range(3000)
    ]
    text = " ".join(rng.choice(words) for _ in range(40000))
    states = []
    for i in range(4):
        text += " ".join(rng.choice(words) for _ in range(2000))
        states.append({"i": i, "text": text})
    assert len(_record.encode_payload("r", None, {}, states[0])) > 2 * 128 * 1024
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        codecs = [txn.get(_keys.log_key(1, i))[1] for i in range(4)]
    env.close()
    assert codecs == [_record.CODEC_STREAM_START] + [_record.CODEC_STREAM_NEXT] * 3
    with steplog.open(path, cache_size=0) as store:
        assert [c.state for c in store.history("r")] == states
        assert [store.load("r", i).state for i in range(4)] == states
        assert store.verify().ok


def test_a_large_batch_of_one_run_holds_one_live_compressor(path: Path) -> None:
    # each keyframe of a batch starts a stream; the one before it takes no more blocks
    # and must not keep its compressor until the commit (before: ~120 KB per chain,
    # hundreds of MB for a batch of a few thousand small states)
    import tracemalloc

    states = [{"step": i, "note": "x" * 100} for i in range(6000)]
    with steplog.open(path) as store:
        store.append_many("warm", states[:10])  # the first streams' allocations
        # a new run's records are compressed in the commit; a cached run's, ahead of it
        for part in (states[:3000], states[3000:]):
            tracemalloc.start()
            try:
                store.append_many("big", part)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 8 << 20, f"append_many peaked at {peak >> 20} MiB"
        assert [cp.state for cp in store.history("big")] == states
        with store.batch() as b:  # and a batch still continues the last stream
            b.append("big", {"step": 6000, "note": "x" * 100})
        assert store.load("big").state == {"step": 6000, "note": "x" * 100}
        assert store.verify().ok


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every compression of a record as (function, made inside a commit)."""
    from steplog import _writer

    in_commit = [False]
    seen: list[tuple[str, bool]] = []
    attempt = _writer.Writer._attempt

    def watched_attempt(self, batch, asleep, isolate):  # type: ignore[no-untyped-def]
        in_commit[0] = True
        try:
            return attempt(self, batch, asleep, isolate)
        finally:
            in_commit[0] = False

    monkeypatch.setattr(_writer.Writer, "_attempt", watched_attempt)
    for name in ("keyframe", "follow", "compress"):
        real = getattr(_record, name)

        def watched(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            seen.append((_name, in_commit[0]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(_record, name, watched)
    return seen


def test_records_are_compressed_outside_the_commit_for_new_and_cold_runs(
    path: Path, compressions: list[tuple[str, bool]]
) -> None:
    # the commit leader holds the only write transaction: a run new to the store, or
    # one not in the cache (after a restart), is compressed by its caller too, or
    # every other writer waits while the leader decodes its chain and compresses
    states = _states(20)
    with steplog.open(path) as store:
        store.append("one", states[0])
        store.append_many("many", states)
        assert [c for c in compressions if c[1]] == []
        for st in states[:5]:  # cheap next blocks of a cached run: the commit's
            store.append("one", st)
        assert [c for c in compressions if c[1]] == [("follow", True)] * 5
    compressions.clear()
    with steplog.open(path) as store:  # a cold cache: the chain is read by the caller
        store.append("one", states[6])
        store.append_many("many", states[:3])
        assert [c for c in compressions if c[1]] == []
        assert [c.state for c in store.history("many")] == states + states[:3]
        assert store.load("one").state == states[6]
    depths = _depths(path, 1, 7)
    assert depths[6] == depths[5] + 1  # the cold append is a delta on its latest, as before


def test_only_a_cheap_next_block_is_compressed_in_the_commit(
    path: Path, compressions: list[tuple[str, bool]]
) -> None:
    """The commit compresses a cached run's next block when its stream's last block was
    small (see _record.LEADER_BLOCK_BYTES); a keyframe, or the block after a large
    change, is compressed by the appending thread, so that the commit never holds up
    the batch's other appends with a long compression."""
    rng = random.Random(7)
    base = {"notes": "".join(rng.choice("abcdef ") for _ in range(16_000)), "step": 0}
    with steplog.open(path) as store:
        store.append("r", base)  # a new run: its keyframe (over 4 KiB), by the caller
        store.append("r", {**base, "step": 1})  # after a keyframe block: the caller
        store.append("r", {**base, "step": 2})  # a small block before: the commit
        noise = "".join(rng.choice("0123456789abcdef") for _ in range(10_000))
        store.append("r", {**base, "step": 3, "noise": noise})  # small before: the commit
        store.append("r", {**base, "step": 4, "noise": noise})  # a large one before: caller
        store.append("r", {**base, "step": 5, "noise": noise})  # small before: the commit
        assert compressions == [
            ("keyframe", False),
            ("follow", False),
            ("follow", True),
            ("follow", True),
            ("follow", False),
            ("follow", True),
        ]
        compressions.clear()
        more = K + 2  # over the chain's keyframe interval
        for i in range(6, 6 + more):
            store.append("r", {**base, "step": i, "noise": noise})
        keyframes = [c for c in compressions if c[0] == "keyframe"]
        assert keyframes  # the chain reached its interval ...
        assert not any(in_commit for _name, in_commit in keyframes)  # ... by the caller
        compressions.clear()
        # a batch's appends are compressed ahead of its commit, each after the one
        # before it, even when the first alone would have been cheap for the commit
        store.append_many("r", [{**base, "step": 6 + more + i, "noise": noise} for i in range(3)])
        assert compressions and not any(in_commit for _name, in_commit in compressions)
        assert [c.state["step"] for c in store.history("r")] == list(range(6 + more + 3))
        assert store.verify().ok


def _blob_state(i: int) -> dict[str, Any]:
    return {"i": i, "blob": "".join(f"{j:05d}" for j in range(400)), "tail": i}  # ~2 KiB


def _cache_counts_match_its_entries(cache: Any) -> None:
    entries = cache._entries.values()
    assert cache._bytes == sum(e.size for e in entries)
    assert cache._stream_bytes == sum(e.stream.memory for e in entries if e.stream)


def test_the_cache_counts_what_it_holds_after_a_batch_ends_a_chain(path: Path) -> None:
    """A batch reaching a keyframe closes the stream its run's cache entry still holds;
    the cache must take off what it counted for that entry, not the closed stream's
    size (zero): else every such batch leaks a compressor's worth of budget, until
    no run keeps a compressor at all."""
    with steplog.open(path, cache_size=8 << 20) as store:
        cache = store._cache
        for r in range(20):
            store.append(f"r{r}", _blob_state(0))  # the cached latest holds a live stream
            store.append_many(f"r{r}", [_blob_state(i) for i in range(1, 70)])  # a keyframe
            _cache_counts_match_its_entries(cache)
            cache.discard(f"r{r}")
        assert (cache._bytes, cache._stream_bytes) == (0, 0)
        store.append("fresh", _blob_state(0))
        store.append("fresh", _blob_state(1))
        fresh = cache.get("fresh")
        assert fresh is not None and fresh.stream is not None  # not stripped for want of room


def test_a_read_of_an_older_snapshot_leaves_the_runs_stream(path: Path) -> None:
    """A read whose snapshot predates the run's latest commit decodes its latest from
    disk; keeping that older record in the cache would drop the writer's newer entry
    and its live stream (the next append a keyframe, and every read of the run's
    latest a chain walk). It must leave the newer entry as it is."""
    import threading

    states = _states(6)
    with steplog.open(path) as store:
        for st in states[:3]:
            store.append("r", st)
        appended = threading.Event()
        seen: list[Any] = []

        def read_old_snapshot() -> None:
            def fn(txn: Any) -> None:
                hdr = store._header(txn, b"r")
                appended.wait(10)  # the snapshot stays as it was when the read began
                seen.append(store._checkpoint(txn, "r", hdr, hdr.length - 1).state)

            store._read(fn)

        reader = threading.Thread(target=read_old_snapshot)
        reader.start()
        store.append("r", states[3])
        newer = store._cache.get("r")
        appended.set()
        reader.join(10)
        assert seen == [states[2]]
        assert store._cache.get("r") is newer  # not replaced by the older record
        assert newer is not None and newer.stream is not None
        for st in states[4:]:
            store.append("r", st)
        assert store.load("r").state == states[5]
    assert _codecs(path, 1, 6)[4:] == [_record.CODEC_STREAM_NEXT] * 2  # the stream went on


def test_a_record_cached_by_a_stale_read_gives_way_to_the_runs_latest(path: Path) -> None:
    """A read of a snapshot from before a delete_latest may cache the deleted record,
    whose seq is above the run's latest since; a later read must still replace it with
    the latest (the record, not the seq, was committed before that read's snapshot)."""
    import threading

    states = _states(3)
    with steplog.open(path) as store:
        for st in states:
            store.append("r", st)
        deleted = threading.Event()

        def read_old_snapshot() -> None:
            def fn(txn: Any) -> None:
                hdr = store._header(txn, b"r")
                deleted.wait(10)
                store._checkpoint(txn, "r", hdr, hdr.length - 1)

            store._read(fn)

        reader = threading.Thread(target=read_old_snapshot)
        reader.start()
        store.delete_latest("r")
        deleted.set()
        reader.join(10)
        stale = store._cache.get("r")
        assert stale is not None and stale.index == 2  # the deleted record, cached
        assert store.load("r").state == states[1]
        latest = store._cache.get("r")
        assert latest is not None and latest.index == 1


def test_the_cache_takes_from_a_read_only_what_is_not_older_than_it_holds() -> None:
    """LatestCache.put of an entry a read decoded: a newer entry held stays; for the
    same record the held entry keeps its stream and gains the read's anchors; an entry
    committed before the read's snapshot gives way."""
    from steplog._cache import Anchor, Latest, LatestCache

    stream = _record.Stream(4096)
    cache = LatestCache(1 << 20)
    cache.put("r", Latest(5, 7 << 24 | 1, 1, b"five", stream, stream.pos))
    cache.put("r", Latest(4, 6 << 24 | 1, 1, b"four"), read_before=7 << 24)  # older read
    assert cache.get("r").payload == b"five"  # type: ignore[union-attr]
    anchors = (Anchor(4, 6 << 24 | 1, b"four"),)
    cache.put("r", Latest(5, 7 << 24 | 1, 1, b"five", anchors=anchors), read_before=8 << 24)
    held = cache.get("r")
    assert held is not None and held.stream is stream and held.anchors == anchors
    cache.put("r", Latest(3, 5 << 24 | 1, 1, b"three"), read_before=9 << 24)  # e.g. after a
    assert cache.get("r").payload == b"three"  # type: ignore[union-attr]  # delete_latest
    stream.close()
