"""steplog benchmark: steplog against raw LMDB, SQLite and LangGraph's SqliteSaver.

    python benchmarks/bench.py            # full run, prints the README table
    python benchmarks/bench.py --quick    # smaller counts, for a smoke check

Every workload runs in its own subprocess (so peak RSS is per workload) on a fresh
directory under --dir (default: a temp dir). All figures of one table come from one
run on one machine; ratios compare rows measured side by side. In the single-writer
workload steplog, raw LMDB and SQLite take turns in rounds (see ``alternating``).
"""

from __future__ import annotations

import argparse
import json
import operator
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import lmdb
import msgspec
import zstandard

import steplog

WORDS = (
    "the agent reads the ticket and looks up the order before it drafts a reply to the "
    "customer about refunds shipping delays invoices and the next steps of the workflow"
).split()


def text(rng: random.Random, nbytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < nbytes:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def sized_state(nbytes: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    return {
        "step": 0,
        "status": "running",
        "scores": [rng.random() for _ in range(8)],
        "notes": text(rng, nbytes - 200),
    }


def next_state(state: dict[str, Any], step: int) -> dict[str, Any]:
    """A checkpoint-to-checkpoint change: a counter, a status, one score."""
    scores = list(state["scores"])
    scores[step % 8] = step / 7.0
    return {**state, "step": step, "status": f"node-{step % 5}", "scores": scores}


def full_record(state: Any) -> bytes:
    """What a store without deltas writes: the zstd-compressed msgpack state."""
    return zstandard.ZstdCompressor(level=3).compress(msgspec.msgpack.encode(state))


def run_threads(count: int, target: Callable[[int], None]) -> float:
    """Run ``target(i)`` on ``count`` threads at once; return the wall time in seconds."""
    ths = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    t0 = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return time.perf_counter() - t0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "lock.mdb")


# ---------------------------------------------------------------- raw engines


class RawLmdb:
    """The yardstick engine: zstd records put under 16-byte keys, ``per_commit`` per
    durable commit (LMDB's default sync and metasync)."""

    def __init__(self, path: Path, per_commit: int) -> None:
        self.env = lmdb.open(str(path), map_size=1 << 34, sync=True, metasync=True)
        self.per_commit = per_commit

    def put(self, values: list[tuple[bytes, bytes]]) -> None:
        for i in range(0, len(values), self.per_commit):
            with self.env.begin(write=True) as txn:
                for key, value in values[i : i + self.per_commit]:
                    txn.put(key, value)

    def close(self) -> None:
        self.env.close()


class RawSqlite:
    """SQLite in WAL mode with synchronous=FULL, ``per_commit`` inserts per commit."""

    def __init__(self, path: Path, per_commit: int) -> None:
        path.mkdir(exist_ok=True)
        self.db = sqlite3.connect(path / "bench.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE log (k BLOB PRIMARY KEY, v BLOB)")
        self.per_commit = per_commit

    def put(self, values: list[tuple[bytes, bytes]]) -> None:
        for i in range(0, len(values), self.per_commit):
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO log VALUES (?, ?)", values[i : i + self.per_commit])
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class RawGroupCommit:
    """Raw LMDB puts from many threads, each returning once its put is durable, through
    the commit protocol steplog's writer uses (a caller that finds nobody leading
    commits its own put; callers arriving meanwhile queue, and a thread of the writer
    then commits all queued, batch after batch, waking each batch's callers, until the
    queue is empty), minus everything steplog adds: no encoding, no indexes, no
    per-operation rollback. The ceiling of that protocol in Python on this machine."""

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(str(path), map_size=1 << 34, sync=True, metasync=True)
        self._mutex = threading.Lock()
        self._work = threading.Condition(self._mutex)
        self._queue: list[list[Any]] = []
        self._leading = False
        self._thread_leads = False
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.puts = 0

    def put(self, key: bytes, value: bytes) -> None:
        # a waiter: [key, value, lock released when durable]
        me = [key, value, threading.Lock()]
        me[2].acquire()
        with self._mutex:
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                self._queue.append(me)
        if not lead:
            me[2].acquire()
            return
        self._commit([me])
        with self._mutex:
            if not self._queue:
                self._leading = False
                return
            self._thread_leads = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, daemon=True)
                self._thread.start()
            else:
                self._work.notify()

    def _serve(self) -> None:
        while True:
            with self._mutex:
                while not self._thread_leads:
                    self._work.wait()
                batch, self._queue = self._queue, []
                if not batch:
                    self._thread_leads = self._leading = False
                    continue
            self._commit(batch)
            for p in batch:
                p[2].release()

    def _commit(self, batch: list[list[Any]]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v, _ in batch:
                txn.put(k, v)
        self.commits += 1
        self.puts += len(batch)

    def close(self) -> None:
        self.env.close()


def alternating(
    n: int, rounds: int, engines: dict[str, Callable[[int, int], None]]
) -> dict[str, float]:
    """Give each engine its share [lo, hi) of ``n`` writes round by round, the order
    rotating every round, so that the drift of a shared disk over the seconds a
    benchmark runs falls on every engine alike; return each engine's rate over all its
    rounds."""
    spent = dict.fromkeys(engines, 0.0)
    names = list(engines)
    for r in range(rounds):
        lo, hi = n * r // rounds, n * (r + 1) // rounds
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            engines[name](lo, hi)
            spent[name] += time.perf_counter() - start
    return {name: n / t for name, t in spent.items()}


#: Rounds in which steplog and the raw engines take turns on the single-writer workload.
ROUNDS = 6


def keyed(values: list[bytes], runs: int) -> list[tuple[bytes, bytes]]:
    return [
        ((i % runs).to_bytes(8, "big") + (i // runs).to_bytes(8, "big"), v)
        for i, v in enumerate(values)
    ]


# ---------------------------------------------------------------- workloads


def w_single(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    """One append per commit, single writer; steplog vs raw LMDB vs SQLite."""
    n, size, runs = args["n"], args["size"], args["runs"]
    base = [sized_state(size, r) for r in range(runs)]
    states = [next_state(base[i % runs], i // runs) for i in range(n)]
    if args.get("rss_only"):  # steplog's own peak RSS, without the yardsticks' data
        with steplog.open(d / "steplog") as store:
            for i, st in enumerate(states):
                store.append(f"run-{i % runs}", st, workflow_id="bench", node="step")
        return {}
    encoded = [full_record(s) for s in states]
    values = keyed(encoded, runs)
    lat: list[float] = []
    raw, sql = RawLmdb(d / "raw", 1), RawSqlite(d / "sq", 1)
    with steplog.open(d / "steplog") as store:

        def appends(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                a = time.perf_counter()
                store.append(f"run-{i % runs}", states[i], workflow_id="bench", node="step")
                lat.append(time.perf_counter() - a)

        rates = alternating(
            n,
            ROUNDS,
            {
                "steplog": appends,
                "raw": lambda lo, hi: raw.put(values[lo:hi]),
                "sqlite": lambda lo, hi: sql.put(values[lo:hi]),
            },
        )
        raw.close()
        sql.close()
        # reads on the same store
        latest = []
        for i in range(2000):
            a = time.perf_counter()
            store.load(f"run-{i % runs}")
            latest.append(time.perf_counter() - a)
        # the same loads as another process (or a worker resuming after a crash) sees
        # them: the run's cached latest payload dropped, so its chain is decoded
        cold = []
        for i in range(500):
            store._cache.discard(f"run-{i % runs}")
            a = time.perf_counter()
            store.load(f"run-{i % runs}")
            cold.append(time.perf_counter() - a)
        by_index = []
        rng = random.Random(1)
        for _ in range(2000):
            r = rng.randrange(runs)
            length = n // runs
            a = time.perf_counter()
            store.load(f"run-{r}", rng.randrange(length))
            by_index.append(time.perf_counter() - a)
        # replay every run, one after another (one run of the 100-run workload is only
        # n/100 records: a single timing that short is mostly noise)
        a = time.perf_counter()
        replayed = sum(1 for r in range(runs) for _ in store.history(f"run-{r}"))
        replay_rate = replayed / (time.perf_counter() - a)
    steplog_bytes = dir_bytes(d / "steplog") / n
    # raw read yardsticks: get + zstd + msgspec decode of the same full state
    env = lmdb.open(str(d / "raw"), readonly=True, lock=False)
    dctx = zstandard.ZstdDecompressor()
    raw_get = []
    keys = [k for k, _ in values]
    with env.begin() as txn:
        for i in range(2000):
            k = keys[-1 - (i % runs)]
            a = time.perf_counter()
            msgspec.msgpack.decode(dctx.decompress(txn.get(k)))
            raw_get.append(time.perf_counter() - a)
        in_run_order = sorted(keys)  # run by run, each in index order, like the replay
        a = time.perf_counter()
        for k in in_run_order:
            msgspec.msgpack.decode(dctx.decompress(txn.get(k)))
        raw_decode_rate = len(in_run_order) / (time.perf_counter() - a)
    env.close()
    return {
        "steplog_rate": rates["steplog"],
        "raw_lmdb_rate": rates["raw"],
        "sqlite_rate": rates["sqlite"],
        "append_p50_us": pct(lat, 0.5) * 1e6,
        "append_p99_us": pct(lat, 0.99) * 1e6,
        "load_latest_p50_us": pct(latest, 0.5) * 1e6,
        "load_latest_cold_p50_us": pct(cold, 0.5) * 1e6,
        "raw_get_decode_p50_us": pct(raw_get, 0.5) * 1e6,
        "load_index_p50_us": pct(by_index, 0.5) * 1e6,
        "replay_rate": replay_rate,
        "raw_decode_rate": raw_decode_rate,
        "steplog_bytes": steplog_bytes,
        "full_record_bytes": statistics.mean(len(e) for e in encoded),
    }


def w_concurrent(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    """N writer threads, one run each, 2 KiB states. With ``raw``, steplog takes turns
    (``alternating``) with the yardsticks: raw LMDB at 1 and 100 puts per commit, SQLite
    at 100, and the two ceilings of any store whose N writers each wait for their own
    durable write: raw LMDB at N puts per commit to N runs from one thread (perfect
    batching, no threads), and raw LMDB puts from N threads through ``RawGroupCommit``
    (steplog's commit protocol with encoding and indexes left out)."""
    writers, per_writer = args["writers"], args["per_writer"]
    base = [sized_state(2048, w) for w in range(writers)]
    lat: list[float] = []
    lock = threading.Lock()
    with steplog.open(d / "steplog") as store:
        states = list(base)

        def steplog_round(lo: int, hi: int) -> None:
            def work(w: int) -> None:
                mine = []
                st = states[w]
                for i in range(lo, hi):
                    st = next_state(st, i)
                    a = time.perf_counter()
                    store.append(f"w{w}", st)
                    mine.append(time.perf_counter() - a)
                states[w] = st
                with lock:
                    lat.extend(mine)

            run_threads(writers, work)

        if not args.get("raw"):
            t0 = time.perf_counter()
            steplog_round(0, per_writer)
            rate = writers * per_writer / (time.perf_counter() - t0)
            rates: dict[str, float] = {}
        else:
            count = writers * per_writer
            values = keyed([full_record(s) for s in _walks(100, count // 100)], 100)
            mine = keyed([full_record(s) for s in _walks(writers, per_writer)], writers)
            engines: dict[str, RawLmdb | RawSqlite] = {
                "raw_lmdb_1_rate": RawLmdb(d / "raw1", 1),
                "raw_lmdb_n_rate": RawLmdb(d / "rawn", writers),
                "raw_lmdb_100_rate": RawLmdb(d / "raw100", 100),
                "sqlite_100_rate": RawSqlite(d / "sq100", 100),
            }
            group = RawGroupCommit(d / "group")

            def group_round(lo: int, hi: int) -> None:
                def work(w: int) -> None:
                    for i in range(lo, hi):
                        group.put(*mine[i * writers + w])

                run_threads(writers, work)

            def engine_round(engine: RawLmdb | RawSqlite) -> Callable[[int, int], None]:
                # as many writes per round as steplog's writers make
                return lambda lo, hi: engine.put(values[lo * writers : hi * writers])

            rates = alternating(
                per_writer,
                ROUNDS,
                {
                    "steplog": steplog_round,
                    "raw_group_rate": group_round,
                    **{name: engine_round(engine) for name, engine in engines.items()},
                },
            )
            rates = {name: r * writers for name, r in rates.items()}  # writes, not rounds' steps
            rate = rates.pop("steplog")
            for engine in engines.values():
                engine.close()
            group.close()
            rates["raw_group_per_commit"] = group.puts / max(group.commits, 1)
        commits = store._writer.commits
    return {
        "steplog_rate": rate,
        "append_p50_us": pct(lat, 0.5) * 1e6,
        "append_p99_us": pct(lat, 0.99) * 1e6,
        "appends_per_commit": writers * per_writer / max(commits, 1),
        **rates,
    }


def _walks(runs: int, steps: int) -> list[dict[str, Any]]:
    """``steps`` successive 2 KiB states of each of ``runs`` runs, step-major (the
    states of step 0 of every run, then of step 1, ...)."""
    walks = []
    for r in range(runs):
        st = sized_state(2048, r)
        walk = []
        for i in range(steps):
            st = next_state(st, i)
            walk.append(st)
        walks.append(walk)
    return [walks[r][i] for i in range(steps) for r in range(runs)]


def chat_states(threads: int, steps: int) -> list[list[dict[str, Any]]]:
    """Workload 2: each step appends one 300-800 byte message and changes small fields."""
    out = []
    for t in range(threads):
        rng = random.Random(t)
        msgs: list[dict[str, Any]] = []
        seq = []
        for s in range(steps):
            msgs = [
                *msgs,
                {
                    "role": "user" if s % 2 else "ai",
                    "id": f"m{t}-{s}",
                    "content": text(rng, rng.randint(300, 800)),
                },
            ]
            seq.append(
                {"messages": msgs, "step": s, "node": f"n{s % 4}", "tokens": rng.randint(100, 9000)}
            )
        out.append(seq)
    return out


def w_chat(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    threads, steps = args["threads"], args["steps"]
    work = chat_states(threads, steps)
    n = threads * steps
    kind = args["kind"]
    if kind == "steplog":
        with steplog.open(d / "steplog") as store:

            def run(t: int) -> None:
                for st in work[t]:
                    store.append(f"thread-{t}", st, workflow_id="chat", node=st["node"])

            elapsed = run_threads(threads, run)
        return {"rate": n / elapsed, "bytes": dir_bytes(d / "steplog") / n}
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(d / "lg.sqlite", check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()

    def put_thread(t: int) -> None:
        config: dict[str, Any] = {"configurable": {"thread_id": f"thread-{t}", "checkpoint_ns": ""}}
        for i, st in enumerate(work[t]):
            cp = empty_checkpoint()
            cp["channel_values"] = st
            cp["channel_versions"] = {k: i + 1 for k in st}
            config = saver.put(config, cp, {"source": "loop", "step": i}, cp["channel_versions"])

    elapsed = run_threads(threads, put_thread)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"rate": n / elapsed, "bytes": dir_bytes(d) / n}


def _lg_saver(kind: str, d: Path) -> Any:
    if kind == "steplog":
        from steplog.langgraph import StepLogSaver

        return StepLogSaver.from_path(d / "steplog")
    if kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(d / "lg.sqlite", check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()
        return saver
    from langgraph.checkpoint.memory import InMemorySaver

    return InMemorySaver()


def _lg_checkpoint(state: dict[str, Any], i: int) -> Any:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.base.id import uuid6

    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=i))
    cp["channel_values"] = state
    cp["channel_versions"] = {k: i + 1 for k in state}
    return cp


def w_langgraph(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    """LangGraph savers side by side: put throughput and size on the growing chat,
    get_tuple p50, listing one thread, and invokes/s of a compiled graph."""
    threads, steps, kind = args["threads"], args["steps"], args["kind"]
    work = chat_states(threads, steps)
    n = threads * steps
    if kind == "asyncsqlite":
        return _lg_async_sqlite(d, work, n)
    if kind == "raw":
        return _lg_raw_floor(d, work, n)
    saver = _lg_saver(kind, d)

    def put_thread(t: int) -> None:
        config: dict[str, Any] = {"configurable": {"thread_id": f"thread-{t}", "checkpoint_ns": ""}}
        for i, st in enumerate(work[t]):
            cp = _lg_checkpoint(st, i)
            config = saver.put(config, cp, {"source": "loop", "step": i}, cp["channel_versions"])
            saver.put_writes(config, [("messages", st["messages"][-1])], f"task-{i}")

    rate = n / run_threads(threads, put_thread)
    # bytes of the chat workload alone, before the reads and invokes below add theirs
    size = None
    if kind == "sqlite":
        saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = dir_bytes(d) / n
    elif kind == "steplog":
        size = dir_bytes(d / "steplog") / n
    if args.get("puts_only"):  # a repeat round of the put figures alone
        if kind == "steplog":
            saver.close()
        return {"rate": rate, "bytes": size}
    lat = _lg_get_tuples(saver, threads)
    a = time.perf_counter()
    listed = len(list(saver.list({"configurable": {"thread_id": "thread-0"}})))
    list_ms = (time.perf_counter() - a) * 1e3
    invokes = _lg_invokes(saver, args["invokes"])
    fanout = _lg_fanout_get_tuples(saver, work[0])
    # as a restarted worker reads: a saver opened afresh on the same file (for
    # steplog, nothing of the threads cached yet)
    if kind == "steplog":
        saver.close()
    reopened = _lg_saver(kind, d) if kind != "memory" else saver
    lat_reopened = _lg_get_tuples(reopened, threads)
    if kind == "steplog":
        reopened.close()
    return {
        "rate": rate,
        "bytes": size,
        "get_tuple_p50_us": pct(lat, 0.5) * 1e6,
        "get_tuple_reopened_p50_us": pct(lat_reopened, 0.5) * 1e6,
        "list_ms": list_ms,
        "listed": listed,
        "invokes": invokes,
        "get_tuple_fanout_p50_us": pct(fanout, 0.5) * 1e6,
    }


def _lg_raw_floor(d: Path, work: list[list[dict[str, Any]]], n: int) -> dict[str, Any]:
    """The floor under any durable saver on LMDB: the same threads and calls, each
    doing only LangGraph's own serialisation (what every saver's put and put_writes
    start with) and one durable raw LMDB put of 1 KiB (about what steplog stores per
    call) through RawGroupCommit: no deltas, no indexes, nothing to read back."""
    from langgraph.checkpoint.base import get_checkpoint_metadata
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    group = RawGroupCommit(d / "raw")

    def put_thread(t: int) -> None:
        config: dict[str, Any] = {"configurable": {"thread_id": f"thread-{t}", "checkpoint_ns": ""}}
        for i, st in enumerate(work[t]):
            cp = _lg_checkpoint(st, i)
            _, c_bytes = serde.dumps_typed(cp)
            serde.dumps_typed(get_checkpoint_metadata(config, {"source": "loop", "step": i}))
            group.put(f"c{t}-{i:08}".encode(), c_bytes[:1024])
            _, w_bytes = serde.dumps_typed(st["messages"][-1])
            group.put(f"w{t}-{i:08}".encode(), (w_bytes * 4)[:1024])

    rate = n / run_threads(len(work), put_thread)
    group.close()
    return {"rate": rate, "per_commit": group.puts / max(group.commits, 1)}


def _lg_get_tuples(saver: Any, threads: int) -> list[float]:
    """Latencies of 500 get_tuple calls of random threads' latest checkpoints."""
    lat = []
    rng = random.Random(3)
    for _ in range(500):
        cfg = {
            "configurable": {"thread_id": f"thread-{rng.randrange(threads)}", "checkpoint_ns": ""}
        }
        a = time.perf_counter()
        saver.get_tuple(cfg)
        lat.append(time.perf_counter() - a)
    return lat


#: Tasks writing after each checkpoint in the fan-out read row (one put_writes each).
FANOUT_TASKS = 3


def _lg_fanout_get_tuples(saver: Any, states: list[dict[str, Any]]) -> list[float]:
    """A thread whose every checkpoint has the writes of FANOUT_TASKS tasks (parallel
    nodes, each one put_writes), as the growing chat: latencies of 300 get_tuple
    calls of its latest checkpoint."""
    config: dict[str, Any] = {"configurable": {"thread_id": "fanout", "checkpoint_ns": ""}}
    for i, st in enumerate(states[:100]):
        cp = _lg_checkpoint(st, i)
        config = saver.put(config, cp, {"source": "loop", "step": i}, cp["channel_versions"])
        for k in range(FANOUT_TASKS):
            saver.put_writes(config, [("messages", st["messages"][-1])], f"task-{i}-{k}")
    latest = {"configurable": {"thread_id": "fanout", "checkpoint_ns": ""}}
    lat = []
    for _ in range(300):
        a = time.perf_counter()
        saver.get_tuple(latest)
        lat.append(time.perf_counter() - a)
    return lat


class _Steps(TypedDict):
    steps: Annotated[list[str], operator.add]


def _lg_invokes(saver: Any, count: int) -> float:
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(_Steps)
    for name in ("plan", "act", "answer"):
        g.add_node(name, lambda s, name=name: {"steps": [name]})
    g.add_edge(START, "plan")
    g.add_edge("plan", "act")
    g.add_edge("act", "answer")
    g.add_edge("answer", END)
    graph = g.compile(checkpointer=saver)
    t0 = time.perf_counter()
    for i in range(count):
        graph.invoke({"steps": []}, {"configurable": {"thread_id": f"invoke-{i}"}})
    return count / (time.perf_counter() - t0)


def _lg_async_sqlite(d: Path, work: list[list[dict[str, Any]]], n: int) -> dict[str, Any]:
    import anyio
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async def main() -> dict[str, Any]:
        async with AsyncSqliteSaver.from_conn_string(str(d / "alg.sqlite")) as saver:

            async def put_thread(t: int) -> None:
                config: dict[str, Any] = {
                    "configurable": {"thread_id": f"thread-{t}", "checkpoint_ns": ""}
                }
                for i, st in enumerate(work[t]):
                    cp = _lg_checkpoint(st, i)
                    config = await saver.aput(
                        config, cp, {"source": "loop", "step": i}, cp["channel_versions"]
                    )
                    await saver.aput_writes(config, [("messages", st["messages"][-1])], f"task-{i}")

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for t in range(len(work)):
                    tg.start_soon(put_thread, t)
            rate = n / (time.perf_counter() - t0)
            lat = []
            for i in range(500):
                cfg = {
                    "configurable": {"thread_id": f"thread-{i % len(work)}", "checkpoint_ns": ""}
                }
                a = time.perf_counter()
                await saver.aget_tuple(cfg)
                lat.append(time.perf_counter() - a)
            a = time.perf_counter()
            listed = len(
                [x async for x in saver.alist({"configurable": {"thread_id": "thread-0"}})]
            )
            list_ms = (time.perf_counter() - a) * 1e3
            return {
                "rate": rate,
                "get_tuple_p50_us": pct(lat, 0.5) * 1e6,
                "list_ms": list_ms,
                "listed": listed,
            }

    out = anyio.run(main)
    out["bytes"] = dir_bytes(d) / n
    out["invokes"] = None
    return out


def w_replay_big(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Write an n-checkpoint run, then replay it in a fresh process-like store; RSS growth."""
    n = args["n"]
    with steplog.open(d / "steplog") as store:
        chunk = 2000
        st = {"step": 0, "note": "x" * 100}
        for i in range(0, n, chunk):
            store.append_many("big", [{**st, "step": j} for j in range(i, min(n, i + chunk))])
    import gc

    gc.collect()
    before, before_anon = rss_now()
    growth = anon_growth = 0
    with steplog.open(d / "steplog") as store:
        t0 = time.perf_counter()
        count = 0
        for _cp in store.history("big"):
            count += 1
            if count % 5_000 == 0:
                total, anon = rss_now()
                growth = max(growth, total - before)
                anon_growth = max(anon_growth, anon - before_anon)
        elapsed = time.perf_counter() - t0
    return {
        "n": count,
        "replay_rate": count / elapsed,
        "rss_growth_mb": growth / 2**20,
        "anon_growth_mb": anon_growth / 2**20,
        "file_mb": dir_bytes(d / "steplog") / 2**20,
    }


def rss_now() -> tuple[int, int]:
    """(resident bytes, resident anonymous bytes): the difference is mapped file pages,
    i.e. the LMDB map's page cache, which the kernel can drop at will."""
    fields: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["RssAnon"]


def w_async(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Concurrent asyncio tasks, each appending to its own run through AsyncStore."""
    import anyio

    tasks, per_task = args["tasks"], args["per_task"]
    base = sized_state(2048, 0)

    async def main() -> float:
        async with steplog.open_async(d / "steplog") as store:

            async def one(t: int) -> None:
                st = base
                for i in range(per_task):
                    st = next_state(st, i)
                    await store.append(f"task-{t}", st)

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for t in range(tasks):
                    tg.start_soon(one, t)
            return tasks * per_task / (time.perf_counter() - t0)

    return {"rate": anyio.run(main)}


def _proc_writer(path: str, proc: int, n: int, threads: int, go: Any, out: Any) -> None:
    with steplog.open(path) as store:

        def work(t: int) -> None:
            st = sized_state(2048, proc * 100 + t)
            for i in range(n):
                st = next_state(st, i)
                store.append(f"p{proc}-t{t}", st)

        go.wait()
        start = time.time()
        run_threads(threads, work)
        out.put((start, time.time()))


def w_procs(d: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Several processes appending to one store directory (timed from a common start,
    after every process has opened the store)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs, n, threads = args["procs"], args["n"], args["threads"]
    steplog.open(d / "steplog").close()
    go, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_proc_writer, args=(str(d / "steplog"), p, n, threads, go, out))
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    time.sleep(2.0)  # let every process import and open the store
    go.set()
    spans = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
    with steplog.open(d / "steplog") as store:
        total = sum(r.length for r in store.runs())
    return {"rate": total / elapsed, "total": total}


WORKLOADS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "langgraph": w_langgraph,
    "async": w_async,
    "procs": w_procs,
    "single": w_single,
    "concurrent": w_concurrent,
    "chat": w_chat,
    "replay_big": w_replay_big,
}


#: Rounds of the LangGraph put figures (see the [6] rows): their median. StepLogSaver's
#: rate moves most with the shared host (its writer's thread is CPU-bound, and so is
#: every caller's serialisation; SqliteSaver waits on flushes), so one slow round in
#: three could still decide a three-round median; five take three slow rounds.
LG_PUT_ROUNDS = 5
#: The [6] put workload: threads, each putting this many steps of a growing chat.
LG_THREADS = 20
LG_STEPS = 200


def run_one(name: str, args: dict[str, Any], root: Path) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(dir=root))
    proc = subprocess.run(
        [sys.executable, __file__, "--one", name, "--args", json.dumps(args), "--dir", str(d)],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(d, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


def child(name: str, args: dict[str, Any], d: Path) -> None:
    if args.get("kind") == "steplog":
        import langgraph.checkpoint.base  # noqa: F401  (the same baseline as the savers)
    baseline = current_rss_mb()
    result = WORKLOADS[name](d, args)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    # a workload that measures its own phase (the replay) keeps that figure
    result.setdefault("rss_growth_mb", result["peak_rss_mb"] - baseline)
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--one")
    ap.add_argument("--args")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ns = ap.parse_args()
    if ns.one:
        child(ns.one, json.loads(ns.args), ns.dir)
        return
    root = ns.dir or Path(tempfile.mkdtemp(prefix="steplog-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    q = ns.quick
    n1 = 400 if q else 2000
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []

    def row(label: str, value: str, ratio: str = "") -> None:
        rows.append((label, value, ratio))
        print(f"  {label:<58} {value:>14}  {ratio}", file=sys.stderr, flush=True)

    print("single writer, one append per commit", file=sys.stderr)
    for size in (2048, 20480):
        for runs in (1, 100):
            r = results[f"single_{size}_{runs}"] = run_one(
                "single", {"n": n1, "size": size, "runs": runs}, root
            )
            r["peak_rss_mb"] = run_one(
                "single", {"n": n1, "size": size, "runs": runs, "rss_only": True}, root
            )["peak_rss_mb"]
            tag = f"{size // 1024} KiB, {runs} run{'s' if runs > 1 else ''}"
            row(
                f"[1] {tag}: steplog durable appends/s",
                f"{r['steplog_rate']:,.0f}",
                f"{r['steplog_rate'] / r['raw_lmdb_rate']:.2f}x raw LMDB 1/commit "
                f"({r['raw_lmdb_rate']:,.0f}/s); {r['steplog_rate'] / r['sqlite_rate']:.2f}x "
                f"SQLite WAL FULL ({r['sqlite_rate']:,.0f}/s)",
            )
            row(
                f"[1] {tag}: append p50 / p99 (us)",
                f"{r['append_p50_us']:,.0f} / {r['append_p99_us']:,.0f}",
            )
            raw_get = r["raw_get_decode_p50_us"]
            row(
                f"[1] {tag}: load latest p50, warm / cold (us)",
                f"{r['load_latest_p50_us']:.1f} / {r['load_latest_cold_p50_us']:.1f}",
                f"{r['load_latest_p50_us'] / raw_get:.2f}x / "
                f"{r['load_latest_cold_p50_us'] / raw_get:.2f}x raw get+zstd+decode "
                f"({raw_get:.1f} us); cold: the run's cached payload dropped",
            )
            row(f"[1] {tag}: load by index p50 (us)", f"{r['load_index_p50_us']:.1f}")
            row(
                f"[1] {tag}: replay records/s",
                f"{r['replay_rate']:,.0f}",
                f"{r['replay_rate'] / r['raw_decode_rate']:.2f}x raw decode "
                f"({r['raw_decode_rate']:,.0f}/s)",
            )
            row(
                f"[1] {tag}: bytes on disk per checkpoint",
                f"{r['steplog_bytes']:,.0f}",
                f"full zstd record would be {r['full_record_bytes']:,.0f}",
            )
            row(f"[1] {tag}: peak RSS, steplog appends alone (MB)", f"{r['peak_rss_mb']:.0f}")

    print("concurrent writers, 2 KiB states", file=sys.stderr)
    per = 150 if q else 500
    conc: dict[int, dict[str, Any]] = {}
    for writers in (1, 4, 16):
        args = {"writers": writers, "per_writer": per if writers > 1 else per * 2}
        conc[writers] = results[f"concurrent_{writers}"] = run_one(
            "concurrent", {**args, "raw": writers == 16}, root
        )
        if writers == 16:  # steplog's own peak RSS, without the yardsticks' data
            conc[writers]["peak_rss_mb"] = run_one("concurrent", args, root)["peak_rss_mb"]
    for writers, r in conc.items():
        ratio = f"{r['steplog_rate'] / conc[1]['steplog_rate']:.1f}x 1 writer"
        if writers == 16:
            ratio += (
                f"; {r['steplog_rate'] / r['raw_lmdb_100_rate']:.2f}x raw LMDB 100/commit "
                f"({r['raw_lmdb_100_rate']:,.0f}/s); SQLite 100/commit "
                f"{r['sqlite_100_rate']:,.0f}/s"
            )
        row(f"[3] {writers} writers: durable appends/s", f"{r['steplog_rate']:,.0f}", ratio)
        row(
            f"[3] {writers} writers: append p50 / p99 (us); appends per commit",
            f"{r['append_p50_us']:,.0f} / {r['append_p99_us']:,.0f}",
            f"{r['appends_per_commit']:.1f} per commit; peak RSS {r['peak_rss_mb']:.0f} MB",
        )
    r = conc[16]
    raw100 = r["raw_lmdb_100_rate"]
    row(
        "[3] ceiling: raw LMDB 16 puts/commit to 16 runs, one thread",
        f"{r['raw_lmdb_n_rate']:,.0f}",
        f"{r['raw_lmdb_n_rate'] / r['raw_lmdb_1_rate']:.1f}x raw LMDB 1/commit "
        f"({r['raw_lmdb_1_rate']:,.0f}/s); {r['raw_lmdb_n_rate'] / raw100:.2f}x raw LMDB "
        "100/commit: 16 writers that each wait for their own durable write, perfectly "
        "batched",
    )
    row(
        "[3] ceiling: raw LMDB puts from 16 threads, group commit",
        f"{r['raw_group_rate']:,.0f}",
        f"{r['raw_group_rate'] / r['raw_lmdb_1_rate']:.1f}x raw LMDB 1/commit; "
        f"{r['raw_group_rate'] / raw100:.2f}x raw LMDB 100/commit; "
        f"{r['raw_group_per_commit']:.1f} per commit; steplog 16 writers "
        f"{r['steplog_rate'] / r['raw_group_rate']:.2f}x this",
    )

    print("async tasks and processes, 2 KiB states", file=sys.stderr)
    r = results["async_100"] = run_one("async", {"tasks": 100, "per_task": 10 if q else 40}, root)
    row(
        "[4] 100 asyncio tasks (AsyncStore): durable appends/s",
        f"{r['rate']:,.0f}",
        f"{r['rate'] / conc[1]['steplog_rate']:.1f}x 1 writer thread",
    )
    for threads in (1, 4):
        r = results[f"procs_4x{threads}"] = run_one(
            "procs", {"procs": 4, "n": 100 if q else 400, "threads": threads}, root
        )
        row(
            f"[4] 4 processes x {threads} thread{'s' if threads > 1 else ''}: durable appends/s",
            f"{r['rate']:,.0f}",
            f"{r['rate'] / conc[1]['steplog_rate']:.1f}x 1 writer thread (one process)",
        )

    print("growing chat (20 threads x 200 steps)", file=sys.stderr)
    chat = {"threads": 20, "steps": 60 if q else 200}
    s = results["chat_steplog"] = run_one("chat", {**chat, "kind": "steplog"}, root)
    lg = results["chat_sqlitesaver"] = run_one("chat", {**chat, "kind": "sqlitesaver"}, root)
    row(
        "[2] chat: steplog Store.append checkpoints/s",
        f"{s['rate']:,.0f}",
        f"{s['rate'] / lg['rate']:.1f}x SqliteSaver.put ({lg['rate']:,.0f}/s); through "
        "LangGraph's saver interface see [6]",
    )
    row(
        "[2] chat: steplog bytes per checkpoint",
        f"{s['bytes']:,.0f}",
        f"1/{lg['bytes'] / s['bytes']:.0f} of SqliteSaver ({lg['bytes']:,.0f} B)",
    )
    row(
        "[2] chat: peak RSS growth steplog / SqliteSaver (MB)",
        f"{s['rss_growth_mb']:.0f} / {lg['rss_growth_mb']:.0f}",
        "over each process's RSS after importing LangGraph",
    )

    print("LangGraph savers: growing chat, 20 threads", file=sys.stderr)
    lg_args = {"threads": LG_THREADS, "steps": 60 if q else LG_STEPS, "invokes": 50 if q else 200}
    lg = {
        k: run_one("langgraph", {**lg_args, "kind": k}, root)
        for k in ("steplog", "sqlite", "asyncsqlite", "memory", "raw")
    }
    results["langgraph"] = lg
    s_, q_ = lg["steplog"], lg["sqlite"]
    # The put figures swing with the host from one minute to the next (StepLogSaver is
    # CPU-bound, SqliteSaver waits on flushes): LG_PUT_ROUNDS - 1 more rounds of the
    # puts alone, the three kinds taking turns, and the medians of all the rounds.
    rounds: dict[str, list[dict[str, Any]]] = {k: [lg[k]] for k in ("steplog", "sqlite", "raw")}
    for _ in range(LG_PUT_ROUNDS - 1):
        for k in rounds:
            rounds[k].append(run_one("langgraph", {**lg_args, "kind": k, "puts_only": True}, root))
    results["langgraph_put_rounds"] = rounds
    rate = {k: statistics.median(r["rate"] for r in rs) for k, rs in rounds.items()}
    size = {k: statistics.median(r["bytes"] for r in rs) for k, rs in rounds.items() if k != "raw"}
    per_round = " / ".join(
        f"{a['rate'] / b['rate']:.1f}x"
        for a, b in zip(rounds["steplog"], rounds["sqlite"], strict=True)
    )
    row(
        f"[6] StepLogSaver put: checkpoints/s (median of {LG_PUT_ROUNDS} rounds)",
        f"{rate['steplog']:,.0f}",
        f"{rate['steplog'] / rate['sqlite']:.1f}x SqliteSaver ({rate['sqlite']:,.0f}/s; "
        f"round by round {per_round}); AsyncSqliteSaver {lg['asyncsqlite']['rate']:,.0f}/s; "
        f"InMemorySaver {lg['memory']['rate']:,.0f}/s (one round each)",
    )
    row(
        "[6] floor: LangGraph's serialisation + raw LMDB puts, group commit",
        f"{rate['raw']:,.0f}",
        f"{rate['raw'] / rate['sqlite']:.1f}x SqliteSaver; StepLogSaver "
        f"{rate['steplog'] / rate['raw']:.2f}x this; the same threads and calls, each "
        "serialising as every saver must, then one durable 1 KiB put",
    )
    row(
        "[6] StepLogSaver bytes per checkpoint",
        f"{size['steplog']:,.0f}",
        f"1/{size['sqlite'] / size['steplog']:.0f} of SqliteSaver ({size['sqlite']:,.0f} B); "
        f"AsyncSqliteSaver {lg['asyncsqlite']['bytes']:,.0f} B; steplog's rounds "
        + " / ".join(f"{r['bytes']:,.0f}" for r in rounds["steplog"]),
    )
    row(
        "[6] get_tuple p50 (us)",
        f"{s_['get_tuple_p50_us']:.0f}",
        f"SqliteSaver {q_['get_tuple_p50_us']:.0f}; AsyncSqliteSaver "
        f"{lg['asyncsqlite']['get_tuple_p50_us']:.0f}; InMemorySaver "
        f"{lg['memory']['get_tuple_p50_us']:.0f}",
    )
    row(
        "[6] get_tuple p50 after reopening the store (us)",
        f"{s_['get_tuple_reopened_p50_us']:.0f}",
        f"SqliteSaver {q_['get_tuple_reopened_p50_us']:.0f}; as a restarted worker reads "
        "(steplog: a thread's first read decodes its delta chain, later ones hit the cache)",
    )
    row(
        f"[6] get_tuple p50, {FANOUT_TASKS} tasks' writes per checkpoint (us)",
        f"{s_['get_tuple_fanout_p50_us']:.0f}",
        f"SqliteSaver {q_['get_tuple_fanout_p50_us']:.0f}; InMemorySaver "
        f"{lg['memory']['get_tuple_fanout_p50_us']:.0f}; a thread of 100 checkpoints, each "
        "followed by one put_writes per task (parallel nodes)",
    )
    row(
        f"[6] list one thread ({s_['listed']} checkpoints), ms",
        f"{s_['list_ms']:.1f}",
        f"SqliteSaver {q_['list_ms']:.1f}; AsyncSqliteSaver {lg['asyncsqlite']['list_ms']:.1f}; "
        f"InMemorySaver {lg['memory']['list_ms']:.1f}",
    )
    row(
        "[6] invokes/s, 3-node compiled graph",
        f"{s_['invokes']:,.0f}",
        f"SqliteSaver {q_['invokes']:,.0f}; InMemorySaver {lg['memory']['invokes']:,.0f}",
    )

    big = 100_000 if q else 1_000_000
    print(f"replay of a {big:,}-checkpoint run", file=sys.stderr)
    r = results["replay_big"] = run_one("replay_big", {"n": big}, root)
    row(
        f"replay {r['n']:,} checkpoints: records/s",
        f"{r['replay_rate']:,.0f}",
        f"RSS growth during the replay {r['rss_growth_mb']:.1f} MB, of which heap "
        f"{r['anon_growth_mb']:.1f} MB (the rest: pages of the {r['file_mb']:.0f} MB store "
        f"still mapped); peak RSS of the process that wrote it {r['peak_rss_mb']:.0f} MB",
    )

    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    print()
    print("| workload | figure | compared |")
    print("|---|---:|---|")
    for label, value, ratio in rows:
        print(f"| {label} | {value} | {ratio} |")
    if not ns.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
