"""Group commit, batches and durability modes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import steplog
from steplog import IndexConflict, InvalidArgument, WorkflowMismatch, _writer
from steplog.store import Durability


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s"


def _run_threads(n: int, target, timeout: float | None = None) -> list[BaseException]:  # type: ignore[no-untyped-def]
    """Run ``target(i)`` in ``n`` threads; their exceptions. With ``timeout``, each must
    have returned by then."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive()
    return errors


def _stall_writer(store: steplog.Store, seconds: float = 0.3) -> threading.Thread:
    """Hold the store's gate for ``seconds`` so that appends queue up meanwhile; join
    the returned thread."""
    release = threading.Event()

    def hold() -> None:
        with store._gate.exclusive():
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    threading.Timer(seconds, release.set).start()
    return holder


def test_concurrent_appends_share_commits(path: Path) -> None:
    with steplog.open(path) as store:
        holder = _stall_writer(store)
        errors = _run_threads(16, lambda i: [store.append(f"r{i}", {"i": j}) for j in range(5)])
        holder.join()
        assert not errors
        assert sum(r.length for r in store.runs()) == 80
        assert store._writer.committed_ops == 80
        assert store._writer.commits < 80


def test_a_lone_caller_leads_on_its_own_thread_and_a_queue_on_the_writers(path: Path) -> None:
    """Nobody leading: a caller commits its own operation on its own thread. Callers
    that queued meanwhile are committed by the writer's thread, batch after batch;
    once the queue is empty the role is free again, and close() ends the thread."""
    with steplog.open(path) as store:
        writer = store._writer
        outcomes, ran_on, op = _a_then_bcd(writer)
        assert outcomes == {n: n for n in "abcd"}
        assert ran_on == {
            "a": "caller-a",
            "b": "steplog-writer",
            "c": "steplog-writer",
            "d": "steplog-writer",
        }
        _wait_until(lambda: not writer._leading)
        assert writer.submit(op("e")) == "e" and ran_on["e"] == threading.current_thread().name
        thread = writer._thread
        assert thread is not None and thread.is_alive()
    thread.join(10)
    assert not thread.is_alive()


def test_without_a_thread_to_start_the_lone_leader_commits_the_queue(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the writer's thread fail to start, the caller handing the role over
    commits the queued batches itself: nobody is left waiting."""
    real_start = threading.Thread.start

    def refuse(self) -> None:  # type: ignore[no-untyped-def]
        if self.name == "steplog-writer":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with steplog.open(path) as store:
        writer = store._writer
        assert writer._thread is None
        outcomes, ran_on, _op = _a_then_bcd(writer)
        assert outcomes == {n: n for n in "abcd"}
        assert set(ran_on.values()) == {"caller-a"}  # a led its own batch, then the queue
        assert not writer._leading
        assert store.append("later", 1).index == 0


def test_each_woken_caller_wakes_the_next_of_its_batch(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers of a committed batch are woken in a chain (the leader wakes one, each
    wakes the next): every one of them returns without waking itself."""
    monkeypatch.setattr(_writer, "SELF_WAKE", 60.0)  # a broken chain would stall here
    with steplog.open(path) as store:
        holder = _stall_writer(store)
        errors = _run_threads(12, lambda i: store.append(f"r{i}", {"i": i}), timeout=10)
        holder.join()
        assert not errors
        assert sum(r.length for r in store.runs()) == 12
        assert store._writer.commits < 12  # some batch held several callers


def test_a_caller_interrupted_as_it_wakes_still_wakes_the_next(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt that reaches a woken caller before it has passed the wake-up on:
    its clean-up passes it on, so the rest of its batch does not wait for SELF_WAKE."""
    monkeypatch.setattr(_writer, "SELF_WAKE", 60.0)
    real_await = _writer._await

    def interrupted_await(pending) -> None:  # type: ignore[no-untyped-def]
        while not pending.done.acquire(timeout=_writer.SELF_WAKE):
            if pending.stage == _writer._SETTLED:
                return
        raise KeyboardInterrupt  # woken with its outcome: interrupted before the chain

    monkeypatch.setattr(_writer, "_await", interrupted_await)
    with steplog.open(path) as store:
        holder = _stall_writer(store)
        errors = _run_threads(12, lambda i: store.append(f"r{i}", {"i": i}), timeout=10)
        holder.join()
        monkeypatch.setattr(_writer, "_await", real_await)
        assert errors and all(isinstance(e, KeyboardInterrupt) for e in errors)
        assert sum(r.length for r in store.runs()) == 12  # each was durable all the same


def test_one_callers_error_fails_only_that_caller(path: Path) -> None:
    with steplog.open(path) as store:
        store.append("shared", 0, workflow_id="wf")
        results: dict[int, object] = {}

        def call(i: int) -> None:
            try:
                if i == 0:
                    store.append("shared", "stale", expected_index=0)
                elif i == 1:
                    store.append("shared", "wrong wf", workflow_id="other")
                else:
                    store.append(f"ok{i}", i)
                results[i] = "ok"
            except steplog.StepLogError as exc:
                results[i] = type(exc)

        _queued_together(store, 8, call)
        assert results[0] is IndexConflict
        assert results[1] is WorkflowMismatch
        assert all(results[i] == "ok" for i in range(2, 8))
        assert store.run("shared").length == 1
        assert sorted(r.run_id for r in store.runs())[:2] == ["ok2", "ok3"]


def _one_batch(store: steplog.Store, ops: list) -> tuple[dict[str, object], int]:  # type: ignore[type-arg]
    """Submit the (name, op) pairs from threads of their own while a first operation
    holds the writer, so that they run together, in order, as one batch; return each
    caller's result or the name of its error, and how many commits landed meanwhile."""
    writer, queued = store._writer, store._writer._queue
    release = threading.Event()
    outcomes: dict[str, object] = {}
    call = _recorder(writer, outcomes)
    first = threading.Thread(target=call, args=("hold", lambda txn, batch: release.wait(10)))
    first.start()
    _wait_until(lambda: writer._leading and not queued)
    threads = []
    for n, (name, op) in enumerate(ops, 1):
        threads.append(threading.Thread(target=call, args=(name, op)))
        threads[-1].start()
        _wait_until(lambda n=n: len(queued) >= n)  # type: ignore[misc]
    commits = writer.commits
    release.set()
    for t in [first, *threads]:
        t.join(10)
        assert not t.is_alive()
    assert outcomes.pop("hold") is True
    return outcomes, writer.commits - commits


def test_an_operation_failing_after_its_writes_is_rolled_back_alone(path: Path) -> None:
    """A batch runs its operations in one transaction; one that raises after writing
    (a bug, a late check) must leave none of its writes, and fail only its caller."""
    with steplog.open(path) as store:

        def put(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
            def op(txn, batch):  # type: ignore[no-untyped-def]
                txn.put(b"x-" + name.encode(), b"v")
                if fail:
                    raise ValueError(f"{name} failed after writing")
                return name

            return op

        outcomes, commits = _one_batch(store, [(n, put(n, n == "b")) for n in "abc"])
        assert outcomes == {"a": "a", "b": "ValueError", "c": "c"}
        assert commits == 2  # the holder's batch, then a, b and c's, run twice, committed once
        with store._live_env().begin() as txn:
            assert txn.get(b"x-a") == b"v"
            assert txn.get(b"x-b") is None
            assert txn.get(b"x-c") == b"v"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["ok", "fails before writing", "fails after writing"]), max_size=6))
def test_a_batch_commits_exactly_its_operations_that_did_not_fail(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str]
) -> None:
    """Whatever mix of operations in one batch fail, and whether before or after their
    own writes: each caller gets its own outcome, and the store holds the writes of
    exactly the operations that succeeded."""
    path = tmp_path_factory.mktemp("batch") / "s"
    with steplog.open(path) as store:

        def op(i: int, kind: str):  # type: ignore[no-untyped-def]
            def run(txn, batch):  # type: ignore[no-untyped-def]
                if kind == "fails before writing":
                    raise ValueError(i)
                txn.put(b"k%d" % i, b"v")
                txn.put(b"shared", b"%d" % i)  # every op overwrites it: the last good wins
                if kind == "fails after writing":
                    raise KeyError(i)
                return i

            return run

        outcomes, _ = _one_batch(store, [(str(i), op(i, kind)) for i, kind in enumerate(kinds)])
        good = [i for i, kind in enumerate(kinds) if kind == "ok"]
        expected: dict[str, object] = {str(i): i for i in good}
        expected |= {
            str(i): "ValueError" if kind == "fails before writing" else "KeyError"
            for i, kind in enumerate(kinds)
            if kind != "ok"
        }
        assert outcomes == expected
        with store._live_env().begin() as txn:
            assert [i for i in range(len(kinds)) if txn.get(b"k%d" % i)] == good
            assert txn.get(b"shared") == (b"%d" % good[-1] if good else None)


def _hold(store: steplog.Store, release: threading.Event) -> None:
    with store._gate.exclusive():
        release.wait()


def _queued_together(store: steplog.Store, n: int, call) -> None:  # type: ignore[no-untyped-def]
    """Run ``call(i)`` from ``n`` threads while the writer is held for 0.3 s, so their
    writes queue up and commit together."""
    release = threading.Event()
    holder = threading.Thread(target=lambda: _hold(store, release))
    holder.start()
    threading.Timer(0.3, release.set).start()
    assert not _run_threads(n, call)
    holder.join()


def test_append_many_is_atomic(path: Path) -> None:
    with steplog.open(path) as store:
        cps = store.append_many("r", [{"i": i} for i in range(5)], workflow_id="wf", node="n")
        assert [c.index for c in cps] == [0, 1, 2, 3, 4]
        assert store.load("r", node="n").index == 4
        with pytest.raises(IndexConflict):
            store.append_many("r", ["x", "y"], expected_index=3)
        with pytest.raises(InvalidArgument):
            store.append_many("r", ["x", object()])
        assert store.run("r").length == 5
        assert store.append_many("r", ["x", "y"], expected_index=5)[-1].index == 6
        assert store.append_many("r", []) == []


def test_batch_commits_many_runs_atomically(path: Path) -> None:
    with steplog.open(path) as store:
        with store.batch() as b:
            for i in range(10):
                b.append(f"run{i % 3}", {"i": i}, workflow_id="wf")
        assert [c.index for c in b.checkpoints][:4] == [0, 0, 0, 1]
        assert sum(r.length for r in store.runs()) == 10
        with pytest.raises(RuntimeError):
            with store.batch() as b:
                b.append("run0", "never")
                raise RuntimeError("caller changed its mind")
        with pytest.raises(IndexConflict):
            with store.batch() as b:
                b.append("new", "a")
                b.append("run0", "b", expected_index=0)
        assert store.run("new") is None
        assert store.run("run0").length == 4


def test_a_batch_can_replace_a_run_only_if_nothing_was_appended_since_it_was_read(
    path: Path,
) -> None:
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r", i)
        read = [cp.state for cp in store.history("r")]
        store.append("r", 3)  # lands between the read and the replacement
        with pytest.raises(IndexConflict) as info:
            with store.batch() as b:
                b.purge("r", expected_index=len(read))
                for state in read[1:]:
                    b.append("r", state)
        assert info.value.actual == 4
        assert [cp.state for cp in store.history("r")] == [0, 1, 2, 3]
        with store.batch() as b:
            b.purge("r", expected_index=4)
            b.purge("never-was", missing_ok=True, expected_index=0)
            b.append("r", "again")
        assert [cp.state for cp in store.history("r")] == ["again"]


def test_durability_modes(path: Path) -> None:
    for mode in ("full", Durability.FAST, "fast"):
        with steplog.open(path, durability=mode) as store:
            store.append("r", mode if isinstance(mode, str) else mode.value)
            assert store.durability in (Durability.FULL, Durability.FAST)
    with steplog.open(path, durability="fast") as store:
        assert store._live_env().flags()["metasync"] is False
        assert store._live_env().flags()["sync"] is True
    with steplog.open(path) as store:
        assert store._live_env().flags()["metasync"] is True
        assert store.run("r").length == 3
    for bad in ("nosync", "writemap", None, 3):
        with pytest.raises(InvalidArgument, match="durability"):
            steplog.open(path, durability=bad)


def test_close_commits_queued_appends(path: Path) -> None:
    store = steplog.open(path)
    done: list[int] = []

    def work(i: int) -> None:
        for j in range(20):
            store.append(f"r{i}", j)
            done.append(1)

    errors = _run_threads(4, work)
    store.close()
    assert not errors
    with steplog.open(path) as again:
        assert sum(r.length for r in again.runs()) == len(done) == 80


def _wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_callers_of_a_committed_batch_wake_even_if_the_next_batch_fails(path: Path) -> None:
    """A committed batch's callers are woken by the next batch (after it runs its own
    operations); if that next batch fails, they still return their results."""
    with steplog.open(path) as store:
        writer = store._writer
        queued = writer._queue

        def put(key: bytes, wait_for_queue: int = 0):  # type: ignore[no-untyped-def]
            def op(txn, batch):  # type: ignore[no-untyped-def]
                _wait_until(lambda: len(queued) >= wait_for_queue)
                txn.put(key, b"v")
                return key

            return op

        def fail(txn, batch):  # type: ignore[no-untyped-def]
            raise lmdb.Error("the disk went away")

        results: dict[str, object] = {}

        def call(name: str, op) -> None:  # type: ignore[no-untyped-def]
            try:
                results[name] = writer.submit(op)
            except steplog.StepLogError as exc:
                results[name] = exc

        threads = {
            # b leads alone and waits inside its batch until c and d queue behind it
            "b": threading.Thread(target=call, args=("b", put(b"tb", wait_for_queue=2))),
            # c leads the batch [c, d] and waits inside it until e queues behind it
            "c": threading.Thread(target=call, args=("c", put(b"tc", wait_for_queue=1))),
            "d": threading.Thread(target=call, args=("d", put(b"td"))),
            "e": threading.Thread(target=call, args=("e", fail)),
        }
        threads["b"].start()
        _wait_until(lambda: writer._leading and not queued)
        threads["c"].start()
        _wait_until(lambda: len(queued) == 1)
        threads["d"].start()
        _wait_until(lambda: len(queued) == 0)  # b's batch committed: [c, d] is running
        threads["e"].start()
        for t in threads.values():
            t.join(timeout=30)
            assert not t.is_alive()
        assert results["b"] == b"tb" and results["c"] == b"tc" and results["d"] == b"td"
        assert isinstance(results["e"], steplog.StorageError)
        assert writer.committed_ops == 3 and not writer._leading and not writer._deferred
        with store._live_env().begin() as txn:
            assert [txn.get(k) for k in (b"tb", b"tc", b"td")] == [b"v"] * 3


def _chain_of_batches(  # type: ignore[no-untyped-def]
    store: steplog.Store,
    successor_ops: list,  # type: ignore[type-arg]
    heavy: bool,
    d_done: threading.Event,
):
    """Drive the writer into: batch [b]; batch [c, d] (the writer's thread leads it;
    their wake is deferred to the next batch); then a batch of ``successor_ops``
    (submitted from threads s0, s1, ...), which may run before this returns. Sets
    ``d_done`` when d returns. Returns (threads, results)."""
    writer = store._writer
    queued = writer._queue
    results: dict[str, object] = {}

    def waits_for(n: int):  # type: ignore[no-untyped-def]
        def op(txn, batch):  # type: ignore[no-untyped-def]
            _wait_until(lambda: len(queued) >= n)
            return "ok"

        return op

    def call(name: str, op, is_heavy: bool = False) -> None:  # type: ignore[no-untyped-def]
        try:
            results[name] = writer.submit(op, heavy=is_heavy)
        except steplog.StepLogError as exc:
            results[name] = exc
        if name == "d":
            d_done.set()

    n = len(successor_ops)
    threads = {
        "b": threading.Thread(target=call, args=("b", waits_for(2))),
        "c": threading.Thread(target=call, args=("c", waits_for(n))),
        "d": threading.Thread(target=call, args=("d", lambda txn, batch: "ok")),
    }
    threads |= {
        f"s{i}": threading.Thread(target=call, args=(f"s{i}", op, heavy))
        for i, op in enumerate(successor_ops)
    }
    threads["b"].start()
    _wait_until(lambda: writer._leading and not queued)
    threads["c"].start()
    _wait_until(lambda: len(queued) == 1)
    threads["d"].start()
    _wait_until(lambda: len(queued) == 0)  # [c, d] is running, waiting for the successors
    for i in range(n):
        threads[f"s{i}"].start()
        _wait_until(lambda i=i: len(queued) == i + 1 or bool(results.get("c")))
    return threads, results


def _join(threads) -> None:  # type: ignore[no-untyped-def]
    for t in threads.values():
        t.join(timeout=30)
        assert not t.is_alive()


def test_a_heavy_operation_does_not_hold_back_the_previous_batchs_callers(path: Path) -> None:
    with steplog.open(path) as store:
        release = threading.Event()
        seen: list[bool] = []
        d_done = threading.Event()

        def heavy(txn, batch):  # type: ignore[no-untyped-def]
            seen.append(d_done.wait(timeout=10))  # d (already durable) returns meanwhile
            release.wait(timeout=10)
            return "heavy done"

        threads, results = _chain_of_batches(store, [heavy], True, d_done)
        _wait_until(lambda: bool(seen))
        release.set()
        _join(threads)
        assert seen == [True]
        assert results == {"b": "ok", "c": "ok", "d": "ok", "s0": "heavy done"}


def test_a_long_batch_wakes_the_previous_batchs_callers_once_over_budget(path: Path) -> None:
    with steplog.open(path) as store:
        seen: list[bool] = []
        d_done = threading.Event()

        def slow(txn, batch):  # type: ignore[no-untyped-def]
            time.sleep(_writer.WAKE_AFTER * 20)
            return "slow"

        def after(txn, batch):  # type: ignore[no-untyped-def]
            seen.append(d_done.wait(timeout=10))  # woken before this op, not at the flush
            return "after"

        threads, results = _chain_of_batches(store, [slow, after], False, d_done)
        _join(threads)
        assert seen == [True]
        assert results == {"b": "ok", "c": "ok", "d": "ok", "s0": "slow", "s1": "after"}


def test_a_failed_group_commit_leaves_nothing_in_the_payload_cache(path: Path) -> None:
    """A fork reads the record an earlier append of its batch wrote, and writes a new
    run; the whole commit then fails. Nothing of it may stay cached: LMDB gives the
    next transaction the failed one's id, so a later append gets the same index and
    seq as the failed record, and a stale entry would pass for it."""
    with steplog.open(path, cache_size=1 << 20) as store:
        store.append("A", {"v": "base " * 100})
        store.append("A", {"v": "base " * 100 + "one"})
        writer, queued = store._writer, store._writer._queue

        def hold(txn, batch):  # type: ignore[no-untyped-def]
            _wait_until(lambda: len(queued) >= 3)

        def fail(txn, batch):  # type: ignore[no-untyped-def]
            raise lmdb.Error("the disk went away")

        results: dict[str, object] = {}

        def call(name: str, fn) -> None:  # type: ignore[no-untyped-def]
            try:
                results[name] = fn()
            except steplog.StepLogError as exc:
                results[name] = exc

        threads = [
            threading.Thread(target=call, args=("hold", lambda: writer.submit(hold))),
            threading.Thread(
                target=call, args=("x", lambda: store.append("A", {"v": "base " * 100 + "X"}))
            ),
            threading.Thread(target=call, args=("fork", lambda: store.fork("A", -1, "F"))),
            threading.Thread(target=call, args=("fail", lambda: writer.submit(fail))),
        ]
        threads[0].start()
        _wait_until(lambda: writer._leading and not queued)
        for i, t in enumerate(threads[1:], 1):
            t.start()
            _wait_until(lambda i=i: len(queued) >= i)  # type: ignore[misc]
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive()
        assert all(isinstance(results[k], steplog.StorageError) for k in ("x", "fork", "fail"))
        assert store._cache.get("F") is None
        y = {"v": "Y " * 100_000}  # its own cache entry is too large to keep
        assert store.append("A", y).index == 2
        assert store.load("A").state == y
        assert store.load("A", 2).state == y
        assert store.run("F") is None
        assert store.fork("A", 1, "F").state == {"v": "base " * 100 + "one"}


# ---------------------------------------------------------------- interrupts


def _recorder(writer: _writer.Writer, outcomes: dict[str, object]):  # type: ignore[no-untyped-def]
    """call(name, op): submit ``op``, recording its result or the name of its error."""

    def call(name: str, op) -> None:  # type: ignore[no-untyped-def]
        try:
            outcomes[name] = writer.submit(op)
        except BaseException as exc:
            outcomes[name] = type(exc).__name__

    return call


def _named_op(writer: _writer.Writer, name: str, wait: int, then):  # type: ignore[no-untyped-def]
    """An operation that waits until ``wait`` operations are queued, calls
    ``then(txn, batch)`` and returns ``name``."""

    def run(txn, batch):  # type: ignore[no-untyped-def]
        _wait_until(lambda: len(writer._queue) >= wait)
        then(txn, batch)
        return name

    return run


def _noting_op(writer: _writer.Writer, ran_on: dict[str, str]):  # type: ignore[no-untyped-def]
    """op(name, wait=0): a _named_op that notes in ``ran_on`` which thread ran it."""

    def op(name: str, wait: int = 0):  # type: ignore[no-untyped-def]
        def note(txn, batch) -> None:  # type: ignore[no-untyped-def]
            ran_on[name] = threading.current_thread().name

        return _named_op(writer, name, wait, note)

    return op


def _a_then_bcd(writer: _writer.Writer):  # type: ignore[no-untyped-def]
    """Operation "a" leads alone until "b", "c" and "d" have queued behind it; returns
    (each call's outcome, the thread each ran on, the op factory used)."""
    outcomes: dict[str, object] = {}
    ran_on: dict[str, str] = {}
    op = _noting_op(writer, ran_on)
    call = _recorder(writer, outcomes)
    _lead_then_queue(writer, call, ("a", op("a", wait=3)), [(n, op(n)) for n in "bcd"])
    return outcomes, ran_on, op


def _lead_then_queue(writer: _writer.Writer, call, lone, queued) -> None:  # type: ignore[no-untyped-def]
    """``call(*lone)`` leads alone; each of ``queued`` (``call`` arguments) queues
    behind it, in order; returns once every call has returned."""
    threads = [threading.Thread(target=call, args=lone, name=f"caller-{lone[0]}")]
    threads[0].start()
    _wait_until(lambda: writer._leading and not writer._queue)
    for n, args in enumerate(queued, 1):
        threads.append(threading.Thread(target=call, args=args, name=f"caller-{args[0]}"))
        threads[-1].start()
        _wait_until(lambda n=n: len(writer._queue) >= n)  # type: ignore[misc]
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def _interrupt(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt in ``thread`` (as a signal or a cancellation would)."""
    import ctypes

    ident = ctypes.c_ulong(thread.ident or 0)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, ctypes.py_object(KeyboardInterrupt))


def test_a_queued_caller_interrupted_leaves_the_queue_working(path: Path) -> None:
    with steplog.open(path) as store:
        writer, queued = store._writer, store._writer._queue
        release = threading.Event()

        def hold(txn, batch):  # type: ignore[no-untyped-def]
            release.wait(10)

        outcomes: dict[str, object] = {}

        def call(name: str, fn) -> None:  # type: ignore[no-untyped-def]
            try:
                outcomes[name] = fn()
            except BaseException as exc:
                outcomes[name] = type(exc).__name__

        leader = threading.Thread(target=call, args=("leader", lambda: writer.submit(hold)))
        leader.start()
        _wait_until(lambda: writer._leading and not queued)
        victim = threading.Thread(target=call, args=("victim", lambda: store.append("v", 1)))
        victim.start()
        _wait_until(lambda: len(queued) == 1)
        _interrupt(victim)
        victim.join(10)
        other = threading.Thread(target=call, args=("other", lambda: store.append("o", 1).index))
        other.start()
        release.set()
        for t in (leader, other):
            t.join(10)
            assert not t.is_alive()
        assert outcomes == {"leader": None, "victim": "KeyboardInterrupt", "other": 0}
        assert store.run("v") is None and not writer._leading


class _Env:
    """An environment whose write transactions raise KeyboardInterrupt just after
    their commit lands (where a signal handler would run)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env

    def begin(self, **kw):  # type: ignore[no-untyped-def]
        parent = kw.get("parent")
        if isinstance(parent, _Txn):
            kw["parent"] = parent._txn
        return _Txn(self._env.begin(**kw), interrupt=parent is None)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._env, name)


class _Txn:
    def __init__(self, txn: lmdb.Transaction, interrupt: bool) -> None:
        self._txn, self._interrupt = txn, interrupt

    def commit(self) -> None:
        self._txn.commit()
        if self._interrupt:
            raise KeyboardInterrupt

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._txn, name)


@pytest.mark.parametrize(
    ("hit", "expected"),
    [
        (1, {"a": "KeyboardInterrupt", "b": b"b", "c": b"c"}),  # a, leading alone
        (2, {"a": b"a", "b": b"b", "c": b"c"}),  # the writer's thread, leading [b, c]
    ],
    ids=["a lone leader", "the writer's thread"],
)
def test_an_interrupt_after_the_commit_landed_tells_the_batch_it_succeeded(
    path: Path, hit: int, expected: dict[str, object]
) -> None:
    """The interrupt reaches the leading thread only: a lone leader's caller hears it
    (its write landed all the same); every caller of the writer's thread's batch
    learns that its write is durable, as it is, and the thread goes on."""
    from contextlib import contextmanager

    env = lmdb.open(str(path), max_dbs=0)
    sessions = [0]

    @contextmanager
    def session():  # type: ignore[no-untyped-def]
        sessions[0] += 1
        yield _Env(env) if sessions[0] == hit else env

    writer = _writer.Writer(session, lambda: None, lambda: None, lambda: None, lambda: None)
    outcomes: dict[str, object] = {}

    def put(key: bytes, wait: bool = False):  # type: ignore[no-untyped-def]
        def op(txn, batch):  # type: ignore[no-untyped-def]
            if wait:
                _wait_until(lambda: len(writer._queue) >= 2)
            txn.put(key, b"v")
            return key

        return op

    call = _recorder(writer, outcomes)
    threads = [threading.Thread(target=call, args=("a", put(b"a", wait=True)))]
    threads[0].start()
    _wait_until(lambda: writer._leading and not writer._queue)  # a's batch is running
    for n, name in enumerate(("b", "c"), 1):  # they queue behind it: one batch next
        threads.append(threading.Thread(target=call, args=(name, put(name.encode()))))
        threads[-1].start()
        _wait_until(lambda n=n: len(writer._queue) >= n)  # type: ignore[misc]
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    with env.begin() as txn:
        assert [txn.get(k) for k in (b"a", b"b", b"c")] == [b"v"] * 3
    assert outcomes == expected
    assert writer.submit(put(b"d")) == b"d"  # the queue goes on
    _wait_until(lambda: not writer._leading)
    writer.close()
    env.close()


def test_an_interrupted_exclusive_wait_does_not_leave_the_gate_shut() -> None:
    from steplog._env import Gate

    gate = Gate()
    gate.enter()  # a reader inside
    waiter = threading.Thread(target=lambda: _swallow(gate.acquire_exclusive))
    waiter.start()
    _wait_until(lambda: gate._exclusive)
    _interrupt(waiter)  # delivered once the waiting thread runs again:
    with gate._cond:
        gate._cond.notify_all()  # a spurious wake-up, as a signal's would be
    waiter.join(10)
    assert not waiter.is_alive() and not gate._exclusive
    gate.leave()
    gate.enter()  # not blocked
    gate.leave()


def _swallow(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except KeyboardInterrupt:
        pass


def test_opening_a_store_while_its_last_handle_closes_waits_for_the_close(path: Path) -> None:
    steplog.open(path).close()
    errors: list[BaseException] = []

    def churn() -> None:
        for _ in range(300):
            try:
                with steplog.open(path) as store:
                    store.run("r")
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


@pytest.mark.parametrize("boom", ["first", "x"], ids=["a lone leader", "the writer's thread"])
def test_an_interrupt_in_an_after_commit_hook_still_wakes_the_whole_batch(
    path: Path, boom: str
) -> None:
    """A hook raising KeyboardInterrupt (as a signal handler would) once the commit has
    landed: the leading thread's caller hears it, if it has one, and every other caller
    returns its result."""
    with steplog.open(path) as store:
        writer = store._writer
        outcomes: dict[str, object] = {}

        def op(name: str, wait: int = 0):  # type: ignore[no-untyped-def]
            def write(txn, batch) -> None:  # type: ignore[no-untyped-def]
                txn.put(name.encode(), b"v")
                if name == boom:

                    def hook() -> None:
                        raise KeyboardInterrupt

                    batch.after_commit.append(hook)

            return _named_op(writer, name, wait, write)

        call = _recorder(writer, outcomes)
        _lead_then_queue(writer, call, ("first", op("first", wait=3)), [(n, op(n)) for n in "xyz"])
        expected = {n: n for n in ("first", "x", "y", "z")}
        if boom == "first":
            expected["first"] = "KeyboardInterrupt"
        assert outcomes == expected
        assert store.append("later", 1).index == 0
        with store._live_env().begin() as txn:
            assert all(txn.get(n.encode()) == b"v" for n in expected)


def test_an_interrupt_as_the_write_transaction_starts_aborts_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write transaction left open would make LMDB refuse every later one."""
    real = _writer.Batch.__init__
    hits = [0]

    def interrupted(self, txn_id: int, headers: object = None) -> None:  # type: ignore[no-untyped-def]
        hits[0] += 1
        if hits[0] == 1:
            raise KeyboardInterrupt
        real(self, txn_id, headers)

    with steplog.open(path) as store:
        monkeypatch.setattr(_writer.Batch, "__init__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.append("r", 1)
        assert store.append("r", 2).index == 0
        assert store.load("r").state == 2


#: Lines of a lone leader's path where an interrupt may land (a signal handler runs
#: between any two lines): before its commit, after it landed, after its outcome was
#: settled, as it hands the role to the writer's thread.
_LEADER_LINES = {
    "calling _commit": ("submit", "interrupt = self._commit([mine], [], mine)"),
    "entering _commit": ("_commit", "live = batch"),
    "right after the commit": ("_attempt", "self.commits += 1  # first"),
    "keeping the headers": ("_attempt", "self._keep_headers(shared, txn_id)"),
    "counting the batch": ("_attempt", "self.committed_ops += ok"),
    "after the outcome": ("_commit", "p.stage = _DECIDED"),
    "during the hooks": ("_commit", "p.stage = _SETTLED"),
    "waiting to hand off": ("_hand_off", "with self._mutex:"),
    "telling the thread": ("_hand_off", "self._work.notify()"),
    "as the role passes": ("_hand_off", "self._thread_leads, passed = True, True"),
}
_LANDED_BEFORE = {"calling _commit": False, "entering _commit": False}


@pytest.mark.parametrize("where", list(_LEADER_LINES))
def test_an_interrupt_anywhere_in_a_lone_leader_strands_no_caller(path: Path, where: str) -> None:
    """The lone leader's caller hears the interrupt, its write landed or not as the
    line says; every caller queued behind it returns its result (the writer's thread
    leads them); the queue and close() go on."""
    import inspect
    import sys

    name, needle = _LEADER_LINES[where]
    fn = getattr(_writer.Writer, name)
    source, first = inspect.getsourcelines(fn)
    line = first + next(i for i, s in enumerate(source) if needle in s)
    with steplog.open(path) as store:
        writer, queued = store._writer, store._writer._queue
        outcomes: dict[str, object] = {}
        call = _recorder(writer, outcomes)
        fired: list[int] = []

        def op(key: str):  # type: ignore[no-untyped-def]
            def run(txn, batch):  # type: ignore[no-untyped-def]
                if key == "a":
                    _wait_until(lambda: len(queued) >= 3)
                txn.put(key.encode(), b"v")
                return key

            return run

        def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
            return local if frame.f_code is fn.__code__ else None

        def local(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "line" and frame.f_lineno == line and not fired:
                _wait_until(lambda: len(queued) >= 3)  # b, c and d wait behind a
                fired.append(len(queued))
                sys.settrace(None)
                raise KeyboardInterrupt
            return local

        def lone() -> None:
            sys.settrace(tracer)
            try:
                call("a", op("a"))
            finally:
                sys.settrace(None)

        a = threading.Thread(target=lone)
        a.start()
        _wait_until(lambda: writer._leading)
        others = [threading.Thread(target=call, args=(n, op(n))) for n in "bcd"]
        for t in others:
            t.start()
        for t in [a, *others]:
            t.join(10)
        assert not any(t.is_alive() for t in [a, *others])
        assert fired, "the interrupt was not injected"
        with store._live_env().begin() as txn:
            landed = {k for k in "abcd" if txn.get(k.encode()) == b"v"}
        assert outcomes == {"a": "KeyboardInterrupt", "b": "b", "c": "c", "d": "d"}
        assert landed == (set("abcd") if _LANDED_BEFORE.get(where, True) else set("bcd"))
        assert store.append("r", 1).index == 0  # the queue still works
    assert not writer._leading


class _SlowBegin:
    """An environment whose top-level write transactions start ``delay`` seconds late,
    as when another process holds LMDB's write lock."""

    def __init__(self, env: lmdb.Environment, delay: float) -> None:
        self._env, self._delay = env, delay

    def begin(self, **kw):  # type: ignore[no-untyped-def]
        if kw.get("write") and kw.get("parent") is None:
            time.sleep(self._delay)
        return self._env.begin(**kw)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._env, name)


def test_a_committed_caller_does_not_wait_for_a_next_batch_held_up(path: Path) -> None:
    """Callers of a committed batch are woken by the next batch; if its leader cannot
    start its transaction (another process holds the write lock), they go on their
    own, well before it does."""
    from contextlib import contextmanager

    env = lmdb.open(str(path), max_dbs=0)
    sessions = [0]

    @contextmanager
    def session():  # type: ignore[no-untyped-def]
        sessions[0] += 1
        yield _SlowBegin(env, 2.0) if sessions[0] == 3 else env  # batches [a], [b, c], [d]

    writer = _writer.Writer(session, lambda: None, lambda: None, lambda: None, lambda: None)
    returned: dict[str, float] = {}
    release = threading.Event()

    def call(name: str, op) -> None:  # type: ignore[no-untyped-def]
        writer.submit(op)
        returned[name] = time.monotonic()

    def put(name: str, wait=None):  # type: ignore[no-untyped-def]
        def op(txn, batch):  # type: ignore[no-untyped-def]
            if wait:
                wait()
            txn.put(name.encode(), b"v")

        return op

    threads = {"a": threading.Thread(target=call, args=("a", put("a", lambda: release.wait(10))))}
    threads["a"].start()
    _wait_until(lambda: writer._leading and not writer._queue)
    # the writer's thread leads [b, c], and waits in b until d has queued: [d] is next,
    # whose leader would wake b and c
    threads["b"] = threading.Thread(
        target=call, args=("b", put("b", lambda: _wait_until(lambda: len(writer._queue) >= 1)))
    )
    threads["c"] = threading.Thread(target=call, args=("c", put("c")))
    threads["b"].start()
    _wait_until(lambda: len(writer._queue) >= 1)
    threads["c"].start()
    _wait_until(lambda: len(writer._queue) >= 2)
    release.set()
    _wait_until(lambda: not writer._queue)  # [b, c] is running
    threads["d"] = threading.Thread(target=call, args=("d", put("d")))
    threads["d"].start()
    for t in threads.values():
        t.join(10)
        assert not t.is_alive()
    _wait_until(lambda: not writer._leading)
    writer.close()
    env.close()
    assert returned["d"] - returned["b"] > 1.5  # d's own batch waited for the lock
    assert returned["c"] - returned["b"] < 0.5  # c's was durable with b's: it went on


def test_an_interrupt_during_the_leaders_chores_leaves_the_batchs_outcome(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's upkeep after a commit (every RESIDENCY_CHECK_EVERY commits) runs
    once the outcome is settled: an interrupt there reaches a lone leader's caller
    only, after its write landed; in the writer's thread it reaches no caller, and the
    batch's callers hear that their durable writes succeeded."""
    with steplog.open(path) as store:
        writer, queued = store._writer, store._writer._queue
        outcomes: dict[str, object] = {}
        call = _recorder(writer, outcomes)

        def check() -> None:  # as if SIGINT's handler ran during the upkeep
            raise KeyboardInterrupt

        monkeypatch.setattr(_writer, "RESIDENCY_CHECK_EVERY", 1)
        monkeypatch.setattr(writer, "_keep_small", check)

        def lone(txn, batch) -> None:  # type: ignore[no-untyped-def]
            _wait_until(lambda: len(queued) >= 2)
            txn.put(b"lone", b"v")

        first = threading.Thread(target=call, args=("a", lone))
        first.start()
        _wait_until(lambda: writer._leading and not queued)
        results: dict[str, object] = {}

        def run(name: str) -> None:
            try:
                results[name] = store.append(name, 1).index
            except BaseException as exc:
                results[name] = type(exc).__name__

        b = threading.Thread(target=run, args=("b",))
        c = threading.Thread(target=run, args=("c",))
        b.start()
        _wait_until(lambda: len(queued) >= 1)
        c.start()
        for t in (first, b, c):
            t.join(10)
            assert not t.is_alive()
        monkeypatch.undo()
        assert outcomes == {"a": "KeyboardInterrupt"}
        assert results == {"b": 0, "c": 0}
        assert store.run("b").length == 1 and store.run("c").length == 1
        with store._live_env().begin() as txn:
            assert txn.get(b"lone") == b"v"


def test_a_second_interrupt_as_a_queued_caller_withdraws_leaves_the_queue_working(
    path: Path,
) -> None:
    """The first interrupt ends a queued caller's wait; a second lands before it has
    taken its op out of the queue. The op must never run."""
    import inspect
    import sys

    source, first = inspect.getsourcelines(_writer.Writer.submit)
    withdraw = first + next(i for i, s in enumerate(source) if "mine.abandoned = True" in s) + 1
    assert "with self._mutex" in source[withdraw - first]
    code = _writer.Writer.submit.__code__
    real_await = _writer._await
    victims: set[int] = set()

    def interrupted_await(pending) -> None:  # type: ignore[no-untyped-def]
        if threading.get_ident() in victims:
            raise KeyboardInterrupt  # the first: it ends the wait
        real_await(pending)

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        return local if frame.f_code is code else None

    def local(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "line" and frame.f_lineno == withdraw:
            sys.settrace(None)
            raise KeyboardInterrupt  # the second, as it withdraws
        return local

    with steplog.open(path) as store:
        writer, queued = store._writer, store._writer._queue
        outcomes: dict[str, object] = {}
        release = threading.Event()
        call = _recorder(writer, outcomes)

        def victim() -> None:
            victims.add(threading.get_ident())
            sys.settrace(tracer)
            try:
                call("victim", lambda txn, batch: txn.put(b"victim", b"v"))
            finally:
                sys.settrace(None)

        a = threading.Thread(target=call, args=("a", lambda txn, b: release.wait(10)))
        a.start()
        _wait_until(lambda: writer._leading and not queued)
        _writer._await = interrupted_await  # type: ignore[assignment]
        try:
            v = threading.Thread(target=victim)
            v.start()
            v.join(10)
        finally:
            _writer._await = real_await
        assert outcomes["victim"] == "KeyboardInterrupt" and len(queued) == 1
        later = threading.Thread(target=call, args=("later", lambda txn, b: "later"))
        later.start()
        _wait_until(lambda: len(queued) >= 2)
        release.set()
        for t in (a, later):
            t.join(10)
            assert not t.is_alive()
        assert outcomes["later"] == "later" and not queued
        with store._live_env().begin() as txn:
            assert txn.get(b"victim") is None
    assert not writer._leading


def test_appends_follow_every_other_write_of_this_process(path: Path) -> None:
    """The writer keeps the run headers its appends wrote between commits; any other
    write (a purge, a batch, a fork, a deletion) may change them, so an append after
    one must see what it did."""
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r", i, workflow_id="w1")
        assert store.purge("r") == 3
        again = store.append("r", "again", workflow_id="w2")
        assert (again.index, again.workflow_id) == (0, "w2")
        with store.batch() as b:
            b.purge("r")
            b.append("r", "x", workflow_id="w3")
        assert store.append("r", "y").index == 1
        assert store.delete_latest("r") is not None
        assert store.append("r", "z").index == 1
        store.fork("r", 1, "f")
        assert store.append("f", "f1").index == 1
        assert store.append_many("r", ["m1", "m2"])[-1].index == 3
        assert store.append("r", "last").index == 4
        assert [c.state for c in store.history("r")] == ["x", "z", "m1", "m2", "last"]
        assert store.run("r").workflow_id == "w3"
        assert store.verify().ok


def test_an_append_refused_in_a_batch_leaves_the_kept_headers_true(path: Path) -> None:
    """Appends of one batch, one of them refused: the writer must keep only what the
    others wrote (a kept header ahead of the store would misplace the next append)."""
    with steplog.open(path) as store:
        store.append("a", 0)
        store.append("b", 0)
        results: dict[int, object] = {}

        def call(i: int) -> None:
            try:
                if i == 0:
                    results[i] = store.append("a", "stale", expected_index=0).index
                else:
                    results[i] = store.append("b", i).index
            except IndexConflict:
                results[i] = IndexConflict

        _queued_together(store, 4, call)
        assert results[0] is IndexConflict
        assert sorted(results[i] for i in (1, 2, 3)) == [1, 2, 3]  # type: ignore[type-var]
        assert store.append("a", "next").index == 1
        assert store.append("b", "next").index == 4
        assert [c.state for c in store.history("a")] == [0, "next"]
        assert store.verify().ok


def test_a_failure_keeping_the_headers_does_not_fail_the_committed_batch(path: Path) -> None:
    """The writer keeps the batch's headers after the commit landed; should that fail
    (say, MemoryError), the batch still succeeded: its callers hear so, and the writer
    forgets the headers rather than trusting a half-kept set."""

    class Failing(dict):  # type: ignore[type-arg]
        def update(self, *args: object, **kwargs: object) -> None:
            raise MemoryError

    with steplog.open(path) as store:
        store.append("r", 0)
        store._writer._headers = Failing(store._writer._headers)
        assert store.append("r", 1).index == 1  # committed, and told so
        assert not isinstance(store._writer._headers, Failing)
        assert store.append("r", 2).index == 2
        assert [c.state for c in store.history("r")] == [0, 1, 2]
