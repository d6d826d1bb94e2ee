"""StepLogSaver on the call sequences the conformance suite does not make: ids put out
of order or twice, deletions that cut a checkpoint's ancestry, DeltaChannel graphs
pruned, long namespaces, non-str thread ids. The expected results are those of
LangGraph's own savers (InMemorySaver, SqliteSaver) on the same calls."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("langgraph")

from langgraph.checkpoint.base import ERROR, INTERRUPT, BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from steplog.langgraph import StepLogSaver

try:
    from langgraph.channels.delta import DeltaChannel
except ImportError:  # a LangGraph before DeltaChannel
    DeltaChannel = None


def _id(n: int) -> str:
    return f"1f000000-0000-6000-8000-{n:012d}"


def _cp(
    n: int, values: dict[str, Any] | None = None, versions: dict[str, Any] | None = None
) -> Any:
    cp = empty_checkpoint()
    cp["id"] = _id(n)
    cp["channel_values"] = dict(values or {})
    cp["channel_versions"] = dict(
        versions if versions is not None else dict.fromkeys(cp["channel_values"], 1)
    )
    return cp


def _cfg(thread: Any, ns: str = "", cid: str | None = None) -> Any:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if cid:
        conf["checkpoint_id"] = cid
    return {"configurable": conf}


def _ids(tuples: Iterator[Any]) -> list[int]:
    return [int(t.checkpoint["id"][-12:]) for t in tuples]


@pytest.fixture
def saver(tmp_path: Path) -> Iterator[StepLogSaver]:
    with StepLogSaver.from_path(tmp_path / "store") as s:
        yield s


def _references() -> list[BaseCheckpointSaver[Any]]:
    return [InMemorySaver(), SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False))]


def _list_views(s: BaseCheckpointSaver[Any]) -> tuple[list[int], ...]:
    return (
        _ids(s.list(_cfg("t"))),
        _ids(s.list(_cfg("t"), limit=1)),
        _ids(s.list(_cfg("t"), before=_cfg("t", cid=_id(3)), limit=1)),
        _ids(s.list(_cfg("u"))),
        _ids(s.list(_cfg("u"), limit=1)),
    )


def test_list_is_newest_id_first_whatever_the_order_of_puts(saver: StepLogSaver) -> None:
    """ids 3, 2, 1 put in that order (a thread copied from another saver's list), and
    an id put twice: listed by id, greatest first, as get_tuple's latest is."""
    for s in [saver, *_references()]:
        for n in (3, 2, 1):
            s.put(_cfg("t"), _cp(n), {"step": n}, {})
        for n in (1, 2, 1):
            s.put(_cfg("u"), _cp(n), {"step": n}, {})
        assert _list_views(s) == ([3, 2, 1], [3], [2], [2, 1], [2]), type(s).__name__


def test_listing_in_order_threads_reads_the_run_in_chunks(saver: StepLogSaver) -> None:
    """The common case (ids increasing with every put) with pending writes between the
    puts, longer than one read chunk, and ``before`` in the middle."""
    config = _cfg("t")
    for n in range(1, 151):
        config = saver.put(config, _cp(n, {"x": n}), {"step": n}, {"x": 1})
        saver.put_writes(config, [("x", n), ("y", -n)], f"task-{n}")
    listed = list(saver.list(_cfg("t")))
    assert _ids(iter(listed)) == list(range(150, 0, -1))
    assert [[w[2] for w in t.pending_writes] for t in listed[:2]] == [[150, -150], [149, -149]]
    assert _ids(saver.list(_cfg("t"), before=_cfg("t", cid=_id(71)), limit=3)) == [70, 69, 68]


def test_delete_for_runs_judges_an_id_put_twice_by_its_newest_put(saver: StepLogSaver) -> None:
    saver.put(_cfg("t"), _cp(1), {"run_id": "X"}, {})
    saver.put(_cfg("t"), _cp(1), {"run_id": "Y"}, {})  # the same id again: now run Y's
    saver.put(_cfg("t", cid=_id(1)), _cp(2), {"run_id": "Z"}, {})
    saver.delete_for_runs(["Y"])
    assert [(t.checkpoint["id"][-1], t.metadata["run_id"]) for t in saver.list(_cfg("t"))] == [
        ("2", "Z")
    ]


def test_deletions_keep_the_values_a_survivor_carries_from_its_ancestors(
    saver: StepLogSaver,
) -> None:
    """A channel whose version did not move is not sent again with a checkpoint; once
    the ancestor that holds its value is deleted, the survivor must still read it."""
    for thread in ("p", "d"):
        saver.put(
            _cfg(thread), _cp(1, {"big": "doc", "n": 1}, {"big": 1, "n": 1}), {"run_id": "r1"}, {}
        )
        saver.put(
            _cfg(thread, cid=_id(1)), _cp(2, {"n": 2}, {"big": 1, "n": 2}), {"run_id": "r2"}, {}
        )
    saver.prune(["p"], strategy="keep_latest")
    saver.delete_for_runs(["r1"])
    for thread in ("p", "d"):
        assert _ids(saver.list(_cfg(thread))) == [2]
        latest = saver.get_tuple(_cfg(thread))
        assert latest is not None
        assert latest.checkpoint["channel_values"] == {"big": "doc", "n": 2}


def test_write_only_ids_survive_rewrites_of_their_thread(saver: StepLogSaver) -> None:
    saver.put(_cfg("t"), _cp(1), {"run_id": "a"}, {})
    saver.put(_cfg("t", cid=_id(1)), _cp(2), {"run_id": "b"}, {})
    saver.put_writes(_cfg("t", cid=_id(3)), [("ch", "early")], "task")  # id 3 not put yet
    saver.delete_for_runs(["a"])
    saver.put(_cfg("t", cid=_id(2)), _cp(3), {"run_id": "c"}, {})
    latest = saver.get_tuple(_cfg("t"))
    assert latest is not None and [w[1:] for w in latest.pending_writes] == [("ch", "early")]


def _items(state: list[str] | None, writes: list[list[str]]) -> list[str]:
    out = list(state or [])
    for w in writes:
        out.extend(w)
    return out


@pytest.mark.parametrize(("frequency", "invokes"), [(1, 8), (3, 8), (5, 8), (5, 3)])
def test_prune_keeps_what_a_delta_channel_needs_to_rebuild(
    tmp_path: Path, frequency: int, invokes: int
) -> None:
    """A DeltaChannel stores its value only every few updates and rebuilds it from the
    writes since: prune(keep_latest) keeps the latest checkpoint and just the
    ancestors it is rebuilt from (all, before its first snapshot); every checkpoint
    kept reads as before, and time travel from the oldest kept one, then the next
    run, go on as without the prune."""
    if DeltaChannel is None:
        pytest.skip("this LangGraph has no DeltaChannel")
    # the functional form: a class body's annotations would not see ``frequency``
    state = TypedDict(  # type: ignore[misc]  # noqa: UP013
        "state",
        {
            "items": Annotated[list[str], DeltaChannel(_items, list, snapshot_frequency=frequency)],
            "n": int,
        },
    )
    g = StateGraph(state)
    g.add_node("a", lambda s: {"items": [f"a{s['n']}"], "n": s["n"] + 1})
    g.add_node("b", lambda s: {"items": [f"b{s['n']}"] if s["n"] % 2 else [], "n": s["n"] + 1})
    g.add_node("c", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    conf: Any = {"configurable": {"thread_id": "t"}}

    def by_step(graph: Any) -> dict[int, Any]:
        return {s.metadata["step"]: s for s in graph.get_state_history(conf)}

    outcomes = []
    kept_steps: list[int] = []
    for prune in (True, False):
        with StepLogSaver.from_path(tmp_path / f"s{prune}") as saver:
            graph = g.compile(checkpointer=saver)
            for i in range(invokes):
                graph.invoke({"n": i * 10}, conf)
            before = by_step(graph)
            if prune:
                saver.prune(["t"], strategy="keep_latest")
                after = by_step(graph)
                kept_steps = sorted(after)
                # (5 checkpoints per invoke; before a first snapshot, all are needed)
                assert len(after) <= min(len(before), 5 * frequency + 2)
                assert all(before[step].values == s.values for step, s in after.items())
            graph.invoke({"n": 500}, before[kept_steps[0]].config)  # time travel
            graph.invoke({"n": 100}, conf)
            outcomes.append(graph.get_state(conf).values)
    assert outcomes[0] == outcomes[1]


def test_a_long_thread_id_and_deep_namespaces_work(saver: StepLogSaver) -> None:
    thread = "t" * 200
    ns = "|".join(f"sub{i}:{'0' * 36}" for i in range(6))  # six nested subgraphs
    config = saver.put(_cfg(thread, ns), _cp(1, {"x": 1}), {}, {})
    saver.put_writes(config, [("x", 2)], "task")
    latest = saver.get_tuple(_cfg(thread, ns))
    assert latest is not None and latest.checkpoint["channel_values"] == {"x": 1}
    assert [
        t.config["configurable"]["checkpoint_ns"]
        for t in saver.list({"configurable": {"thread_id": thread}})
    ] == [ns]
    assert saver.get_tuple(_cfg("u" * 300)) is None
    saver.delete_thread(thread)
    assert saver.get_tuple(_cfg(thread, ns)) is None


def test_thread_ids_need_not_be_str(saver: StepLogSaver) -> None:
    """Like SqliteSaver, every method takes the str() of a thread id."""
    saver.put(_cfg(7), _cp(1, {"x": 1}), {}, {})
    saver.copy_thread(7, 8)  # type: ignore[arg-type]
    assert saver.get_tuple(_cfg("8")) is not None
    saver.prune([7], strategy="keep_latest")  # type: ignore[list-item]
    saver.delete_thread(7)  # type: ignore[arg-type]
    assert saver.get_tuple(_cfg(7)) is None and saver.get_tuple(_cfg(8)) is not None


_THREADS = st.sampled_from(["t1", "t1", "t2"])
_NSS = st.sampled_from(["", "", "sub:1|inner:2"])
_N = st.integers(1, 6)
_PUT = st.tuples(st.just("put"), _THREADS, _NSS, _N, st.booleans(), st.integers(0, 3))
_LIST = st.tuples(
    st.just("list"),
    _THREADS,
    _NSS,
    st.integers(0, 7),
    st.sampled_from([None, 0, 1, 3]),
    st.sampled_from([None, {"step": 1}]),
)
_OPS = st.one_of(
    _PUT,
    _PUT,
    st.tuples(
        st.just("writes"),
        _THREADS,
        _NSS,
        _N,
        st.lists(
            st.tuples(st.sampled_from(["a", "b", ERROR, INTERRUPT]), st.integers(0, 9)), max_size=3
        ),
        st.sampled_from(["ta", "tb"]),
    ),
    st.tuples(st.just("get"), _THREADS, _NSS, st.integers(0, 8)),
    _LIST,
    _LIST,
    st.tuples(st.just("delete"), _THREADS),
)


def _observe(s: BaseCheckpointSaver[Any], op: tuple[Any, ...], parents: dict[Any, str]) -> Any:
    def seen(t: Any) -> Any:
        if t is None:
            return None
        return (
            t.config["configurable"],
            t.parent_config,
            dict(t.metadata),
            t.checkpoint["channel_values"],
            t.pending_writes,
        )

    kind, thread = op[0], op[1]
    if kind == "put":
        _, _, ns, n, with_parent, step = op
        parent = parents.get((thread, ns)) if with_parent else None
        cp = _cp(n, {"a": step, "b": [n, step]}, {"a": n, "b": n})
        s.put(_cfg(thread, ns, parent), cp, {"step": step}, dict(cp["channel_versions"]))
        parents[(thread, ns)] = _id(n)
        return None
    if kind == "writes":
        _, _, ns, n, writes, task = op
        s.put_writes(_cfg(thread, ns, _id(n)), writes, task)
        return None
    if kind == "get":
        _, _, ns, n = op
        return seen(s.get_tuple(_cfg(thread, ns, _id(n) if n else None)))
    if kind == "list":
        _, _, ns, before, limit, meta = op
        cut = _cfg(thread, ns, _id(before)) if before else None
        return [seen(t) for t in s.list(_cfg(thread, ns), before=cut, filter=meta, limit=limit)]
    s.delete_thread(thread)
    parents.clear()
    return None


_LIST_ALL = ("list", "t1", "", 0, None, None)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(_OPS, min_size=1, max_size=25))
@example(ops=[("put", "t1", "", 2, False, 0), ("put", "t1", "", 1, True, 1), _LIST_ALL])
@example(ops=[("put", "t1", "", n, True, n) for n in (1, 2, 1)] + [_LIST_ALL])
def test_the_saver_reads_back_what_in_memory_saver_does(tmp_path_factory: Any, ops: Any) -> None:
    """Random sequences of puts (ids in any order, put again, with or without a
    parent), pending writes (also to ids never put), reads, listings and deletions:
    every read returns what LangGraph's InMemorySaver returns."""
    with StepLogSaver.from_path(tmp_path_factory.mktemp("diff") / "s") as saver:
        reference = InMemorySaver()
        mine: dict[Any, str] = {}
        theirs: dict[Any, str] = {}
        for op in ops:
            assert _observe(saver, op, mine) == _observe(reference, op, theirs), op


def test_a_listing_interleaved_with_a_rewrite_yields_each_id_once_with_its_own_record(
    saver: StepLogSaver,
) -> None:
    """The listing reads the node index and the records in separate snapshots; when
    the thread is rewritten in between (records shift), every tuple must still be
    the record of its own id."""
    saver.put(_cfg("t"), _cp(1, {"x": 1}), {"run_id": "doomed"}, {"x": 1})
    for n in range(500, 563):
        saver.put(_cfg("t"), _cp(n, {"x": n}), {"run_id": "ok"}, {"x": 1})
    saver.put(_cfg("t"), _cp(300, {"x": 300}), {"run_id": "ok"}, {"x": 1})
    saver.put(_cfg("t"), _cp(200, {"x": 200}), {"run_id": "ok"}, {"x": 1})
    it = saver.list(_cfg("t"))
    got = [next(it) for _ in range(64)]
    saver.delete_for_runs(["doomed"])  # drops index 0: every later record shifts down
    got += list(it)
    ids = [int(t.checkpoint["id"][-12:]) for t in got]
    assert ids == [*range(562, 499, -1), 300, 200]
    assert all(t.checkpoint["channel_values"]["x"] == n for t, n in zip(got, ids, strict=True))


def test_a_put_committed_during_a_rewrite_is_not_lost(saver: StepLogSaver) -> None:
    """delete_for_runs reads the thread, then replaces it in one batch: a put that
    another thread commits in between must survive (the rewrite starts over)."""
    for n in range(1, 6):
        saver.put(_cfg("t"), _cp(n, {"x": n}), {"run_id": "old" if n < 3 else "new"}, {"x": n})
    store, real_batch, raced = saver.store, saver.store.batch, []

    def batch() -> Any:
        if not raced:  # the other thread's put lands just before the first batch
            raced.append(saver.put(_cfg("t"), _cp(6, {"x": 6}), {"run_id": "new"}, {"x": 6}))
        return real_batch()

    store.batch = batch  # type: ignore[method-assign]
    try:
        saver.delete_for_runs(["old"])
    finally:
        store.batch = real_batch  # type: ignore[method-assign]
    assert _ids(saver.list(_cfg("t"))) == [6, 5, 4, 3]


def test_before_may_name_any_id(saver: StepLogSaver) -> None:
    """Ids that no checkpoint could have (empty, too long, with NUL) still bound the
    listing, as they do for InMemorySaver."""
    reference = InMemorySaver()
    for s in (saver, reference):
        for n in (1, 2):
            s.put(_cfg("t"), _cp(n), {}, {})
    for before in ("", "z" * 600, _id(2), _id(2) + "\x00", "0"):
        cut: Any = {
            "configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": before}
        }
        mine, theirs = (_ids(s.list(_cfg("t"), before=cut)) for s in (saver, reference))
        assert mine == theirs, repr(before)


def test_a_checkpoint_put_as_its_own_parent_reads_lists_and_prunes(saver: StepLogSaver) -> None:
    """A thread copied from another saver by putting each tuple under its own config
    names every checkpoint as its own parent: reads must not walk that loop forever
    (InMemorySaver returns such a checkpoint at once)."""
    cp = _cp(1, {}, {"a": 1})  # a versioned channel with no stored value
    config = _cfg("t", cid=cp["id"])
    saver.put(config, cp, {}, {"a": 1})
    results: dict[str, Any] = {}

    def calls() -> None:
        results["get"] = saver.get_tuple(config)
        results["list"] = list(saver.list(_cfg("t")))
        saver.prune(["t"], strategy="keep_latest")
        results["after"] = saver.get_tuple(_cfg("t"))

    worker = threading.Thread(target=calls, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a read or prune walked the parent loop forever"
    reference = InMemorySaver()
    reference.put(config, cp, {}, {"a": 1})
    expected = reference.get_tuple(config)
    assert expected is not None
    for key in ("get", "after"):
        assert results[key].checkpoint["channel_values"] == expected.checkpoint["channel_values"]
        assert results[key].parent_config == expected.parent_config
    assert len(results["list"]) == 1


def test_tuples_read_again_are_fresh_objects(saver: StepLogSaver) -> None:
    """Reads of a thread's latest checkpoint reuse its decoded record; what they hand
    out must still be the caller's own to change."""
    config = saver.put(_cfg("t"), _cp(1, {"x": [1, 2]}), {"step": 1}, {"x": 1})
    saver.put_writes(config, [("x", [3])], "task")
    first = saver.get_tuple(_cfg("t"))
    assert first is not None
    first.checkpoint["channel_values"]["x"].append(99)
    first.metadata["step"] = -1
    first.pending_writes[0][2].append(99)
    again = saver.get_tuple(_cfg("t"))
    assert again is not None
    assert again.checkpoint["channel_values"] == {"x": [1, 2]}
    assert again.metadata["step"] == 1 and again.pending_writes[0][2] == [3]


def _chat_with_tasks(saver: StepLogSaver, steps: int, tasks: int) -> list[str]:
    """A growing chat of ``steps`` checkpoints on thread "t", each followed by the
    writes of ``tasks`` tasks (one put_writes each); returns the messages."""
    messages: list[str] = []
    config = _cfg("t")
    for n in range(1, steps + 1):
        messages.append(f"message {n} " + "words " * 60)
        config = saver.put(config, _cp(n, {"m": list(messages)}), {"step": n}, {"m": n})
        for k in range(tasks):
            saver.put_writes(config, [("m", [f"reply {n}.{k:02}"])], f"task-{k:02}")
    return messages


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of the records decoded from disk from now on (one-element list)."""
    from steplog import _record

    decoded = [0]
    real = _record.Chain.decode

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoded[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_record.Chain, "decode", counting)
    return decoded


@pytest.mark.parametrize("tasks", [1, 3])
def test_a_restarted_process_decodes_a_threads_latest_checkpoint_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tasks: int
) -> None:
    """After a restart nothing is cached: the first get_tuple of a thread walks the
    delta chain of its latest checkpoint; it must keep what it decoded (the writes
    records, the last of them the run's latest, and the large checkpoint record
    before them), so the next get_tuple of the thread decodes nothing. With several
    tasks, each put_writes is a record of its own after the checkpoint."""
    path = tmp_path / "store"
    with StepLogSaver.from_path(path) as first:
        messages = _chat_with_tasks(first, 39, tasks)
    decoded = _count_decodes(monkeypatch)
    with StepLogSaver.from_path(path) as second:
        got = second.get_tuple(_cfg("t"))
        assert got is not None and got.checkpoint["channel_values"] == {"m": messages}
        assert [w[2] for w in got.pending_writes] == [[f"reply 39.{k:02}"] for k in range(tasks)]
        assert decoded[0] > 2  # the chain behind the latest checkpoint was walked
        decoded[0] = 0
        again = second.get_tuple(_cfg("t"))
        assert again is not None and again.checkpoint == got.checkpoint
        assert again.pending_writes == got.pending_writes
        assert decoded[0] == 0
        second.put(_cfg("t"), _cp(40, {"m": messages[:1]}), {"step": 40}, {"m": 40})
        newest = second.get_tuple(_cfg("t"))
        assert newest is not None and newest.checkpoint["channel_values"] == {"m": messages[:1]}


@pytest.mark.parametrize("tasks", [3, 40])
def test_a_checkpoint_with_writes_of_several_tasks_is_read_without_decoding_its_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tasks: int
) -> None:
    """In the process that wrote them, a checkpoint and the writes records of its
    tasks (one record per put_writes) are all cached: get_tuple decodes nothing, up
    to MAX_ANCHORS records after the checkpoint; past that, reads walk the chain and
    still return every write."""
    from steplog import _cache

    with StepLogSaver.from_path(tmp_path / "store") as saver:
        messages = _chat_with_tasks(saver, 11, tasks)
        decoded = _count_decodes(monkeypatch)
        got = saver.get_tuple(_cfg("t"))
        assert got is not None and got.checkpoint["channel_values"] == {"m": messages}
        assert [w[2] for w in got.pending_writes] == [[f"reply 11.{k:02}"] for k in range(tasks)]
        if tasks <= _cache.MAX_ANCHORS:
            assert decoded[0] == 0
        else:
            assert decoded[0] > 0
