"""Many handles and many processes on one store directory."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import steplog
from steplog import IndexConflict, InvalidArgument, StoreClosed

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s"


def test_handles_in_one_process_share_the_store(path: Path) -> None:
    a = steplog.open(path)
    b = steplog.open(path)
    a.append("r", 1)
    assert b.load("r").state == 1
    b.append("r", 2)
    a.close()
    assert b.load("r").index == 1
    with pytest.raises(StoreClosed):
        a.load("r")
    b.close()
    with steplog.open(path) as c:
        assert c.run("r").length == 2


def test_second_handle_must_agree_on_durability(path: Path) -> None:
    with steplog.open(path, durability="fast"):
        with pytest.raises(InvalidArgument, match="durability"):
            steplog.open(path, durability="full")


def test_child_after_fork_opens_afresh(path: Path) -> None:
    store = steplog.open(path)
    store.append("r", "parent")
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            try:
                store.load("r")
                code = 2
            except StoreClosed:
                pass
            with steplog.open(path) as mine:
                mine.append("r", "child")
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [c.state for c in store.history("r")] == ["parent", "child"]
    store.close()


def _cas_worker(path: str, proc: int, threads: int, calls: int, out: multiprocessing.Queue) -> None:
    wins: list[tuple[int, str]] = []
    losses = 0
    lock = threading.Lock()
    with steplog.open(path, durability="fast") as store:

        def loop(t: int) -> None:
            nonlocal losses
            for i in range(calls):
                latest = store.load("shared")
                nxt = latest.index + 1 if latest else 0
                tag = f"{proc}.{t}.{i}"
                try:
                    cp = store.append("shared", {"tag": tag}, expected_index=nxt)
                except IndexConflict as exc:
                    assert exc.actual > nxt
                    with lock:
                        losses += 1
                else:
                    assert cp.index == nxt
                    with lock:
                        wins.append((cp.index, tag))

        ts = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
    out.put((wins, losses))


def test_compare_and_append_holds_across_processes(path: Path) -> None:
    procs, threads, calls = 8, 4, 500
    steplog.open(path).close()
    out = SPAWN.Queue()
    workers = [
        SPAWN.Process(target=_cas_worker, args=(str(path), p, threads, calls, out))
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    wins = sorted(win for ws, _ in results for win in ws)
    losses = sum(lost for _, lost in results)
    assert len(wins) + losses == procs * threads * calls
    with steplog.open(path) as store:
        history = [(c.index, c.state["tag"]) for c in store.history("shared")]
    assert [i for i, _ in history] == list(range(len(history)))  # dense
    assert history == wins  # every acknowledged win is there, exactly once


def test_map_grown_by_another_process(path: Path) -> None:
    with steplog.open(path, map_size=256 << 10) as store:
        store.append("mine", "before")
        script = (
            "import os, sys, steplog\n"
            "with steplog.open(sys.argv[1], map_size=256 << 10) as s:\n"
            "    for i in range(40): s.append('theirs', os.urandom(100_000).hex())\n"
        )
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        assert store.run("theirs").length == 40
        assert len(store.load("theirs", 39).state) == 200_000
        store.append("mine", os.urandom(300_000).hex())
        assert store.run("mine").length == 2


def test_stale_reader_slot_of_a_killed_process_is_reclaimed(path: Path) -> None:
    import lmdb

    from steplog import _writer

    script = (
        "import os, signal, sys, lmdb\n"
        "env = lmdb.open(sys.argv[1])\n"
        "txn = env.begin()\n"
        "print(os.getpid(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    with steplog.open(path, durability="fast") as store:  # held open: the slot persists
        store.append("r", 0)
        proc = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True
        )
        assert proc.returncode == -signal.SIGKILL
        dead_pid = proc.stdout.strip()
        assert dead_pid in store._live_env().readers()
        for i in range(_writer.READER_CHECK_EVERY):
            store.append("r", i)
        assert dead_pid not in store._live_env().readers()
    env = lmdb.open(str(path), readonly=True)
    env.close()


def test_appends_from_many_processes_interleave(path: Path) -> None:
    script = (
        "import sys, steplog\n"
        "with steplog.open(sys.argv[1]) as s:\n"
        "    for i in range(50): s.append('shared', {'p': sys.argv[2], 'i': i})\n"
    )
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(p)]) for p in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert time.monotonic() - start < 120
    with steplog.open(path) as store:
        states = [c.state for c in store.history("shared")]
    assert len(states) == 200
    for p in range(4):
        assert [s["i"] for s in states if s["p"] == str(p)] == list(range(50))


def test_processes_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    # Every process starts its open at the same instant on a path that does not exist
    # yet: one creates the store, the rest must find a finished one (not a half-made
    # directory, not an "LMDB environment that is not a steplog store").
    script = (
        "import sys, time, steplog\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "with steplog.open(sys.argv[1]) as s:\n"
        "    s.append('r', sys.argv[3])\n"
    )
    for round_no in range(3):
        path = tmp_path / f"round{round_no}" / "s"
        go = time.time() + 1.5
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(path), str(go), str(p)],
                stderr=subprocess.PIPE,
            )
            for p in range(6)
        ]
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, errors
        with steplog.open(path) as store:
            assert sorted(c.state for c in store.history("r")) == [str(p) for p in range(6)]
        assert oct(path.stat().st_mode & 0o777) == oct(0o700)


def test_map_grows_under_a_burst_while_another_process_reads(path: Path) -> None:
    with steplog.open(path, map_size=128 << 10) as store:
        store.append("r", {"i": -1})
        reader = (
            "import sys, time, steplog\n"
            "end = time.monotonic() + 3\n"
            "n = 0\n"
            "with steplog.open(sys.argv[1], map_size=128 << 10) as s:\n"
            "    while time.monotonic() < end:\n"
            "        cp = s.load('r')\n"
            "        assert cp is not None\n"
            "        idx = [c.index for c in s.history('r')]\n"
            "        assert idx == list(range(len(idx))) and len(idx) > cp.index\n"
            "        n += 1\n"
            "print(n)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", reader, str(path)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)
        blob = os.urandom(30_000).hex()
        for i in range(150):
            store.append("r", {"i": i, "blob": blob[: 1000 + i * 300]})
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and int(out) > 0
        assert store.verify().ok
        assert store.run("r").length == 151


def test_full_store_is_usable_again_when_space_returns(path: Path) -> None:
    from steplog import StorageError

    written = 0
    with steplog.open(path, map_size=256 << 10, max_map_size=1 << 20) as store:
        with pytest.raises(StorageError, match="max_map_size"):
            for _ in range(1000):
                store.append("r", os.urandom(40_000))
                written += 1
        assert store.verify().ok
        assert store.run("r").length == written
    with steplog.open(path, max_map_size=8 << 20) as store:  # more room
        for _ in range(20):
            store.append("r", os.urandom(40_000))
        assert store.run("r").length == written + 20
        assert store.verify().ok


def test_an_append_after_another_process_rewrote_the_run_follows_that_run(path: Path) -> None:
    """The writer keeps the run headers its appends wrote, to skip reading them; a
    commit by another process in between (here: the run purged and made again under
    another workflow) must make it read them afresh."""
    script = (
        "import sys, steplog\n"
        "with steplog.open(sys.argv[1]) as s:\n"
        "    s.purge('r')\n"
        "    s.append('r', 'a', workflow_id='w2')\n"
        "    s.append('r', 'b')\n"
    )
    with steplog.open(path) as store:
        store.append("r", 0, workflow_id="w1")
        store.append("r", 1)
        store.append("r", 2)
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        mine = store.append("r", "mine")
        assert (mine.index, mine.workflow_id) == (2, "w2")
        assert [c.state for c in store.history("r")] == ["a", "b", "mine"]
        with pytest.raises(IndexConflict):
            store.append("r", "late", expected_index=2)
        assert store.latest("w2") is not None and store.latest("w2").state == "mine"
        assert store.latest("w1") is None
        assert store.verify().ok


def test_a_handles_max_record_size_holds_for_what_another_handle_cached(path: Path) -> None:
    """Handles in one process share the payload cache; one with a smaller
    max_record_size must still refuse a record larger than it, as it does cold."""
    big = {"blob": "x" * 300_000, "n": 1}
    with steplog.open(path) as wide:
        wide.append("r", {"blob": "y" * 300_000, "n": 0})
        wide.append("r", big)
        assert wide.load("r").state == big  # cached now
        with steplog.open(path, max_record_size=100_000) as narrow:
            with pytest.raises(steplog.CorruptRecord, match="max_record_size"):
                narrow.load("r")
            with pytest.raises(steplog.CorruptRecord, match="max_record_size"):
                narrow.load("r", 0)
            with pytest.raises(steplog.CorruptRecord, match="max_record_size"):
                list(narrow.history("r"))
        assert wide.load("r").state == big
