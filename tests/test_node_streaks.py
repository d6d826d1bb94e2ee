"""Node entries as streaks (format 2): consecutive checkpoints that name one node share
one node entry, whose value holds how many they are. Format 3 keeps a run's newest
streaks in its header (its tail) until TAIL_MAX of them have gathered. Reads by node,
delete_latest and verify see exactly the checkpoints each node wrote in every format;
a format 1 store keeps one entry per checkpoint and reads alike."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import lmdb
import msgspec
import pytest

import steplog
from steplog import _env, _keys
from steplog.store import HISTORY_CHUNK, TAIL_BYTES, TAIL_MAX, _node_indices, _View

Entry = tuple[str, int, int]  # (node, first index, streak length)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s"


def _entries_in(txn: lmdb.Transaction, run_no: int = 1) -> list[Entry]:
    """The run's node entries as stored, in key order."""
    prefix = _keys.nodes_prefix(run_no)
    cur = txn.cursor()
    out = []
    if cur.set_range(prefix):
        for key, value in cur:
            if not key.startswith(prefix):
                break
            node = key[len(prefix) : -9].decode()
            start = _keys.U64.unpack_from(key, len(key) - 8)[0]
            out.append((node, start, _keys.streak_length(value)))
    return out


def _streaks_in(txn: lmdb.Transaction, run_id: bytes = b"r") -> list[Entry]:
    """The run's streaks, in the node index or its header's tail, in key order."""
    from steplog.store import _HEADER_DECODER

    run_no = _run_no(txn, run_id)
    hdr = _HEADER_DECODER.decode(txn.get(_keys.header_key(run_no)))
    tail = [(node.decode(), start, length) for node, start, length in hdr.tail]
    return sorted(_entries_in(txn, run_no) + tail)


def _run_no(txn: lmdb.Transaction, run_id: bytes) -> int:
    no: int = _keys.U64.unpack(txn.get(_keys.id_key(run_id)))[0]
    return no


def _read(path: Path, fn):  # type: ignore[no-untyped-def]
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return fn(txn)
    finally:
        env.close()


def _entries(path: Path) -> list[Entry]:
    """The run's node entries as stored in the node index."""
    return _read(path, _entries_in)  # type: ignore[no-any-return]


def _all_streaks(path: Path) -> list[Entry]:
    return _read(path, _streaks_in)  # type: ignore[no-any-return]


@pytest.fixture(params=[2, 3], ids=["format 2", "format 3"])
def fmt(request: pytest.FixtureRequest, path: Path) -> int:
    """A new store at ``path`` made in the format given."""
    steplog.open(path).close()
    _set_format(path, request.param)
    return int(request.param)


def _set_format(path: Path, version: int) -> None:
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        marker = {"magic": _env.FORMAT_MAGIC, "version": version}
        txn.put(_keys.META_FORMAT, msgspec.msgpack.encode(marker))
    env.close()


NODES = ["a", "a", "b", "a", "a", "a", None, "a", "b", "b"]


def _by_node(nodes: list[str | None]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        if node is not None:
            out.setdefault(node, []).append(i)
    return out


def _check_reads(store: steplog.Store, nodes: list[str | None]) -> None:
    """Every read by node agrees with ``nodes`` (the node each index names)."""
    for node, indices in _by_node(nodes).items():
        assert [c.index for c in store.history("r", node=node)] == indices
        assert store.load("r", node=node).index == indices[-1]
        for lo in range(len(nodes) + 1):
            for hi in range(lo, len(nodes) + 1):
                got = [c.index for c in store.history("r", start=lo, stop=hi, node=node)]
                assert got == [i for i in indices if lo <= i < hi], (node, lo, hi)
    for c in store.history("r", node="a"):
        assert c.node == "a" and c.state == c.index


def test_consecutive_checkpoints_of_a_node_share_one_entry(path: Path, fmt: int) -> None:
    with steplog.open(path) as store:
        for i, node in enumerate(NODES):
            store.append("r", i, node=node)
        _check_reads(store, NODES)
    streaks = [("a", 0, 2), ("a", 3, 3), ("a", 7, 1), ("b", 2, 1), ("b", 8, 2)]
    assert _all_streaks(path) == streaks
    assert _entries(path) == (streaks if fmt == 2 else [])  # format 3: all in the tail
    with steplog.open(path) as store:
        assert store.verify().ok


def test_an_atomic_batch_lengthens_the_streak_as_it_goes(path: Path, fmt: int) -> None:
    with steplog.open(path) as store:
        store.append("r", 0, node="a")
        with store.batch() as b:
            for i in range(1, 4):
                b.append("r", i, node="a")
            b.append("r", 4, node="b")
        assert [c.index for c in store.history("r", node="a")] == [0, 1, 2, 3]
    assert _all_streaks(path) == [("a", 0, 4), ("b", 4, 1)]


def test_delete_latest_shortens_the_streak_then_drops_its_entry(path: Path, fmt: int) -> None:
    nodes = list(NODES)
    with steplog.open(path) as store:
        for i, node in enumerate(nodes):
            store.append("r", i, node=node)
        while nodes:
            store.delete_latest("r")
            nodes.pop()
            if nodes:
                _check_reads(store, nodes)
            assert store.verify().ok
            if len(nodes) == 5:  # index 4 ended the streak a 3..5
                assert store._read(_streaks_in) == [("a", 0, 2), ("a", 3, 2), ("b", 2, 1)]
        assert store._read(_streaks_in) == []
        for i, node in enumerate(["a", "a"]):  # a streak starts afresh
            store.append("r", i, node=node)
    assert _all_streaks(path) == [("a", 0, 2)]


def test_a_streak_read_in_chunks_loses_nothing_at_their_borders(path: Path, fmt: int) -> None:
    n = 2 * HISTORY_CHUNK + 7
    with steplog.open(path) as store:
        with store.batch() as b:
            for i in range(n):
                b.append("r", i, node="a" if i != HISTORY_CHUNK + 3 else "b")
        assert [c.index for c in store.history("r", node="a")] == [
            i for i in range(n) if i != HISTORY_CHUNK + 3
        ]
        assert [c.index for c in store.history("r", node="a", start=HISTORY_CHUNK)] == [
            i for i in range(HISTORY_CHUNK, n) if i != HISTORY_CHUNK + 3
        ]

        def chunk(txn: lmdb.Transaction, lo: int) -> list[int]:
            hdr = store._header(txn, b"r")
            return _node_indices(txn, hdr, b"a", lo, n, HISTORY_CHUNK)

        # a chunk stays bounded however long the streak it reads
        assert store._read(lambda txn: chunk(txn, 0)) == list(range(HISTORY_CHUNK))
        assert store._read(lambda txn: chunk(txn, 5)) == [
            i for i in range(5, HISTORY_CHUNK + 6) if i != HISTORY_CHUNK + 3
        ]
    assert _all_streaks(path) == [
        ("a", 0, HISTORY_CHUNK + 3),
        ("a", HISTORY_CHUNK + 4, n - HISTORY_CHUNK - 4),
        ("b", HISTORY_CHUNK + 3, 1),
    ]


def test_a_fork_starts_its_own_streak(path: Path) -> None:
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r", i, node="a")
        store.fork("r", 1, "kid")
        store.append("kid", 9, node="a")
        assert [c.index for c in store.history("kid", node="a")] == [0, 1]
        assert store.verify().ok


def test_a_format_1_store_keeps_one_entry_per_checkpoint_and_reads_alike(path: Path) -> None:
    steplog.open(path).close()
    _set_format(path, 1)
    with steplog.open(path) as store:
        for i, node in enumerate(NODES):
            store.append("r", i, node=node)
        _check_reads(store, NODES)
        store.delete_latest("r")
        assert store.load("r", node="b").index == 8
        assert store.verify().ok
    assert [e[2] for e in _entries(path)] == [1] * 8  # what format 1 readers understand
    _set_format(path, 2)  # entries of one checkpoint each are valid streaks too
    with steplog.open(path) as store:
        _check_reads(store, NODES[:-1])
        store.append("r", 9, node="b")  # lengthens the format 1 entry at 8
        _check_reads(store, NODES)
        assert store.verify().ok
    assert ("b", 8, 2) in _entries(path)


def test_new_stores_are_made_in_format_3(path: Path) -> None:
    steplog.open(path).close()
    marker = _read(path, lambda txn: msgspec.msgpack.decode(txn.get(_keys.META_FORMAT)))
    assert marker == {"magic": "steplog", "version": 3}


@pytest.mark.parametrize(
    ("start", "value", "what"),
    [
        (3, b"\x05", "runs past the run's end"),
        (1, b"\x02", "overlaps the streak at 0"),
        (0, b"\x01", "a non-minimal length"),
        (0, b"\x00\x03", "a non-minimal length"),
        (0, b"\x01" * 9, "longer than an index"),
    ],
)
def test_verify_reports_a_bad_streak(path: Path, start: int, value: bytes, what: str) -> None:
    with steplog.open(path) as store:
        for i in range(5):
            store.append("r", i, node="a")
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(_keys.node_key(1, b"a", start), value)
    env.close()
    with steplog.open(path) as store:
        problems = store.verify().problems
    assert any(p.kind == "index" for p in problems), what
    assert {(p.run_id, p.kind) for p in problems} <= {("r", "index"), ("r", "header")}


def test_verify_reports_a_streak_in_a_format_1_store(path: Path) -> None:
    steplog.open(path).close()
    _set_format(path, 1)
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r", i, node="a")
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.delete(_keys.node_key(1, b"a", 1))
        txn.delete(_keys.node_key(1, b"a", 2))
        txn.put(_keys.node_key(1, b"a", 0), _keys.streak_value(3))
    env.close()
    with steplog.open(path) as store:
        assert [p.kind for p in store.verify().problems] == ["index", "index"]


@pytest.mark.parametrize(
    ("streak_node", "streak"),
    [(b"a", 2), (b"b", 0), (None, -2), (b"a", 4), (b"a", -3)],
    ids=["starts elsewhere", "another node", "says no node", "past the end", "no such code"],
)
def test_verify_reports_a_header_wrong_about_the_latest_streak(
    path: Path, streak_node: bytes | None, streak: int, rewrite_header: Callable[..., None]
) -> None:
    steplog.open(path).close()
    _set_format(path, 2)  # (format 3 keeps the latest streak in the header's tail)
    with steplog.open(path) as store:
        for i in range(4):
            store.append("r", i, node="a")
        hdr = store._read(lambda txn: store._header(txn, b"r"))
        assert (hdr.streak_node, hdr.streak) == (b"a", 0)
        assert store.verify().ok
    rewrite_header(path, hdr, streak_node=streak_node, streak=streak)
    with steplog.open(path) as store:
        problems = store.verify().problems
        assert [p.kind for p in problems] == ["header"]
        if not 0 <= streak < 4 and streak != -2:  # a word the next append does not trust
            store.append("r", 4, node="a")
            assert [p.kind for p in store.verify().problems] == []


def test_an_append_after_delete_latest_asks_the_index(path: Path) -> None:
    steplog.open(path).close()
    _set_format(path, 2)
    with steplog.open(path) as store:
        for i, node in enumerate(["a", "a", "b"]):
            store.append("r", i, node=node)
        store.delete_latest("r")  # the header no longer knows the latest's streak
        store.append("r", 2, node="a")
        assert store.verify().ok
        store.delete_latest("r")
        store.delete_latest("r")
        store.append("r", 1, node="b")
        assert store.verify().ok
        assert store._read(_entries_in) == [("a", 0, 1), ("b", 1, 1)]
        store.append("r", 2, node="c")
        for _ in range(3):
            store.delete_latest("r")
        store.append("r", 0, node="c")  # the header said "c from 2" before the deletes
        assert store.verify().ok
    assert _entries(path) == [("c", 0, 1)]


# ---------------------------------------------------------------- format 3: the tail


def _tail(store: steplog.Store, run_id: bytes = b"r") -> list[Entry]:
    hdr = store._read(lambda txn: store._header(txn, run_id))
    return [(node.decode(), start, length) for node, start, length in hdr.tail]


def test_streaks_wait_in_the_header_until_tail_max_gather(path: Path) -> None:
    """Format 3: an append that starts or lengthens a streak writes no node entry until
    the header holds TAIL_MAX streaks; the next streak sends all but itself to the
    node index, at once."""
    with steplog.open(path) as store:
        for i in range(TAIL_MAX):
            store.append("r", 2 * i, node=f"n{i}")
            store.append("r", 2 * i + 1, node=f"n{i}")  # lengthens, in the header
            assert store._read(_entries_in) == []
        assert _tail(store) == [(f"n{i}", 2 * i, 2) for i in range(TAIL_MAX)]
        store.append("r", 0, node="last")
        assert store._read(_entries_in) == sorted((f"n{i}", 2 * i, 2) for i in range(TAIL_MAX))
        assert _tail(store) == [("last", 2 * TAIL_MAX, 1)]
        store.append("r", 0)  # names no node: the tail stays
        store.append("r", 0, node="last")  # not adjacent: a streak of its own
        assert _tail(store) == [("last", 2 * TAIL_MAX, 1), ("last", 2 * TAIL_MAX + 2, 1)]
        assert [c.index for c in store.history("r", node="last")] == [16, 18]
        assert store.verify().ok


def test_long_node_names_send_the_tail_to_the_index_sooner(path: Path) -> None:
    name = "x" * (TAIL_BYTES // 2)
    with steplog.open(path) as store:
        store.append("r", 0, node=name + "1")
        store.append("r", 1, node=name + "2")  # the names now pass TAIL_BYTES
        assert store._read(_entries_in) == [(name + "1", 0, 1)]
        assert _tail(store) == [(name + "2", 1, 1)]
        assert store.verify().ok


def _model_nodes_below(
    nodes: list[str | None], below: str | None, limit: int
) -> list[tuple[str, list[int]]]:
    named = sorted(
        {n for n in nodes if n is not None and (below is None or n.encode() < below.encode())},
        key=str.encode,
        reverse=True,
    )
    return [(n, [i for i, m in enumerate(nodes) if m == n]) for n in named[:limit]]


@pytest.mark.parametrize("seed", range(6))
def test_reads_by_node_agree_with_a_model_across_index_and_tail(
    path: Path, fmt: int, seed: int
) -> None:
    """Random appends and deletes (several tails' worth, so that streaks sit in both
    the index and the tail, and deletes reach back into the index): every read by node
    agrees with the list of nodes each index names."""
    rng = random.Random(seed)
    names: list[str | None] = [None, "a", "b", "c", "ab", "é", "z" * 40]
    nodes: list[str | None] = []
    with steplog.open(path) as store:
        for step in range(90):
            if nodes and rng.random() < 0.2:
                store.delete_latest("r")
                nodes.pop()
            else:
                node = rng.choice(names) if rng.random() < 0.5 or not nodes else nodes[-1]
                store.append("r", len(nodes), node=node)
                nodes.append(node)
            if step % 30 == 29 or step == 89:
                for node, indices in _by_node(nodes).items():
                    assert [c.index for c in store.history("r", node=node)] == indices
                    assert store.load("r", node=node).index == indices[-1]
                    lo, hi = len(nodes) // 3, 2 * len(nodes) // 3
                    got = [c.index for c in store.history("r", start=lo, stop=hi, node=node)]
                    assert got == [i for i in indices if lo <= i < hi]
                for below in [None, "a", "ab", "b", "c", "é", "zz"]:
                    for limit in (1, 2, 7):
                        got_nodes = store._view(
                            lambda view: _View.nodes_below(view, "r", below, limit)  # noqa: B023
                        )
                        assert got_nodes == _model_nodes_below(nodes, below, limit)
                assert store.verify().ok
        if fmt == 3:
            assert store._read(_entries_in), "no streak reached the index"


def test_a_node_history_read_in_chunks_sees_its_tail_move_into_the_index(path: Path) -> None:
    """A streak in the header's tail when a history read starts, written to the node
    index between two of its chunks: read once, neither lost nor twice."""
    n = 2 * HISTORY_CHUNK + 5
    with steplog.open(path) as store:
        with store.batch() as b:
            for i in range(n):
                b.append("r", i, node="a")
        assert _tail(store) == [("a", 0, n)]
        reading = store.history("r", node="a")
        first = [next(reading).index for _ in range(HISTORY_CHUNK)]
        for i in range(TAIL_MAX):  # enough new streaks to send ("a", 0, n) to the index
            store.append("r", n + i, node=f"n{i}")
        assert ("a", 0, n) in store._read(_entries_in)
        assert first + [c.index for c in reading] == list(range(n))


@pytest.mark.parametrize(
    ("tail", "what"),
    [
        (((b"a", 2, 2),), "overlaps the indexed streak"),
        (((b"b", 7, 3),), "runs past the run's end"),
        (((b"b", 6, 0),), "an empty streak"),
        (((b"b", 6, 1), (b"c", 5, 1)), "out of order"),
        (((b"b", 6, 1), (b"b", 6, 1)), "one checkpoint twice"),
    ],
)
def test_verify_reports_a_bad_tail(
    path: Path, tail: tuple, what: str, rewrite_header: Callable[..., None]
) -> None:  # type: ignore[type-arg]
    with steplog.open(path) as store:
        with store.batch() as b:
            for i in range(TAIL_MAX + 1):  # ("a", 0, 1) .. go to the index
                b.append("r", i, node="a" if i % 2 == 0 else f"n{i}")
        hdr = store._read(lambda txn: store._header(txn, b"r"))
        assert ("a", 0, 1) in store._read(_entries_in) and store.verify().ok
    rewrite_header(path, hdr, tail=tail)
    with steplog.open(path) as store:
        problems = store.verify().problems
    assert problems, what
    assert {(p.run_id, p.kind) for p in problems} <= {("r", "index"), ("r", "header")}


def test_verify_reports_a_tail_in_a_format_2_store(
    path: Path, rewrite_header: Callable[..., None]
) -> None:
    steplog.open(path).close()
    _set_format(path, 2)
    with steplog.open(path) as store:
        store.append("r", 0, node="a")
        hdr = store._read(lambda txn: store._header(txn, b"r"))
    rewrite_header(path, hdr, tail=((b"a", 0, 1),))
    with steplog.open(path) as store:
        assert [p.kind for p in store.verify().problems] == ["header"]
        store.delete_latest("r")  # a format 2 store's streaks are in its index only
        assert store._read(_entries_in) == []
