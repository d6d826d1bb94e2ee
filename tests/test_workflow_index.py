"""The workflow index (format 3): an append leaves a run's entry where it is when the
run is its workflow's newest already (a LangGraph thread's run, one per workflow, moves
it never), and moves it otherwise; the entries' order stays the runs' update order.
runs(workflow), latest(workflow), purge and verify see the same in every format."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import lmdb
import msgspec
import pytest

import steplog
from steplog import _env, _keys
from steplog.store import _prefix_items


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s"


def _entries(store: steplog.Store, workflow: str) -> list[tuple[int, int]]:
    """(seq, run number) of the workflow's entries, in key order."""
    prefix = _keys.workflow_prefix(workflow.encode())
    return store._read(
        lambda txn: [
            (_keys.U64.unpack_from(key, len(prefix))[0], _keys.U64.unpack(value)[0])
            for key, value in _prefix_items(txn, prefix)
        ]
    )


def _set_format(path: Path, version: int) -> None:
    steplog.open(path).close()
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        marker = {"magic": _env.FORMAT_MAGIC, "version": version}
        txn.put(_keys.META_FORMAT, msgspec.msgpack.encode(marker))
    env.close()


def test_the_newest_run_of_a_workflow_keeps_its_entry(path: Path) -> None:
    with steplog.open(path) as store:
        first = store.append("r", 0, workflow_id="wf")
        for i in range(1, 5):
            store.append("r", i, workflow_id="wf")
        entries = _entries(store, "wf")
        assert len(entries) == 1  # never moved: keyed by its first append's seq
        hdr = store._read(lambda txn: store._header(txn, b"r"))
        assert entries[0][0] == hdr.wseq < hdr.seq
        assert store.latest("wf").index == 4 and first.index == 0
        assert store.verify().ok


def test_a_format_2_store_moves_the_entry_at_every_append(path: Path) -> None:
    _set_format(path, 2)
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r", i, workflow_id="wf")
        hdr = store._read(lambda txn: store._header(txn, b"r"))
        assert _entries(store, "wf") == [(hdr.seq, hdr.run_no)] and hdr.wseq == -1
        assert store.verify().ok


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_runs_of_a_workflow_stay_in_update_order(path: Path, fmt: int, seed: int) -> None:
    """Random appends, delete_latest, forks and purges over a few runs of two
    workflows: runs(workflow) lists them newest-updated first, latest(workflow) is the
    newest's latest, and verify is clean, after every step."""
    _set_format(path, fmt)
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(4)]
    wf_of = {name: ("a" if i % 2 == 0 else "b") for i, name in enumerate(names)}
    with steplog.open(path) as store:
        for step in range(60):
            name = rng.choice(names)
            info = store.run(name)
            roll = rng.random()
            if info is not None and info.length and roll < 0.15:
                store.delete_latest(name)
            elif info is not None and roll < 0.2:
                store.purge(name)
            elif info is None and roll < 0.3 and store.run(names[0]) is not None:
                if store.run(names[0]).length:  # type: ignore[union-attr]
                    store.fork(names[0], 0, name, workflow_id=wf_of[name])
            else:
                store.append(name, step, workflow_id=wf_of[name])
            for wf in ("a", "b"):
                listed = store.runs(wf)
                stamps = [(r.updated_at, -i) for i, r in enumerate(listed)]
                assert stamps == sorted(stamps, reverse=True), (step, wf)
                seqs = [
                    store._read(lambda t, n=r.run_id: store._header(t, n.encode())).seq
                    for r in listed
                ]
                assert seqs == sorted(seqs, reverse=True), (step, wf)
                newest = next((r for r in listed if r.length), None)
                latest = store.latest(wf)
                if newest is None or listed[0].length == 0:
                    continue
                assert latest is not None and latest.run_id == listed[0].run_id
            assert store.verify().ok, step


def test_an_append_writes_a_missing_entry_afresh(path: Path) -> None:
    """A damaged store lost the newest run's workflow entry: the next append writes it
    again (it does not keep an entry that is not there)."""
    with steplog.open(path) as store:
        store.append("r", 0, workflow_id="wf")
        store.append("r", 1, workflow_id="wf")  # keeps its entry
        hdr = store._read(lambda txn: store._header(txn, b"r"))
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        assert txn.delete(_keys.workflow_key(b"wf", hdr.wseq))
    env.close()
    with steplog.open(path) as store:
        assert not store.verify().ok
        store.append("r", 2, workflow_id="wf")
        assert [r.run_id for r in store.runs("wf")] == ["r"]
        assert store.latest("wf").index == 2
        assert store.verify().ok


@pytest.mark.parametrize("fmt", [2, 3])
def test_verify_reports_a_wseq_where_there_is_no_entry_to_key(
    path: Path, fmt: int, rewrite_header: Callable[..., None]
) -> None:
    _set_format(path, fmt)
    names = ["alone"] if fmt == 3 else ["alone", "r"]  # (format 3 may key by a wseq)
    with steplog.open(path) as store:
        store.append("alone", 0)  # no workflow
        store.append("r", 0, workflow_id="wf")
        headers = [store._read(lambda txn, n=n: store._header(txn, n.encode())) for n in names]
    for hdr in headers:
        rewrite_header(path, hdr, wseq=hdr.seq)
    with steplog.open(path) as store:
        problems = store.verify().problems
    assert sorted((p.run_id, p.kind) for p in problems if p.kind == "header") == [
        (n, "header") for n in sorted(names)
    ]


def test_purge_removes_an_entry_keyed_by_an_older_seq(path: Path) -> None:
    with steplog.open(path) as store:
        for i in range(3):
            store.append("r", i, workflow_id="wf")
        store.append("other", 0, workflow_id="wf2")
        store.purge("r")
        assert _entries(store, "wf") == [] and store.runs("wf") == []
        assert store.verify().ok


@pytest.mark.parametrize("what", ["keyed elsewhere", "out of order", "keyed below the run before"])
def test_verify_reports_a_workflow_entry_that_lies(path: Path, what: str) -> None:
    with steplog.open(path) as store:
        store.append("old", 0, workflow_id="wf")
        store.append("new", 0, workflow_id="wf")
        store.append("new", 1, workflow_id="wf")  # stays: the newest already
        old = store._read(lambda txn: store._header(txn, b"old"))
        new = store._read(lambda txn: store._header(txn, b"new"))
        assert store.verify().ok
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        if what == "keyed elsewhere":
            wrong = msgspec.structs.replace(new, wseq=new.seq)
            txn.put(_keys.header_key(new.run_no), msgspec.msgpack.encode(wrong))
        else:
            # "out of order": "old" updated after "new", still listed before it;
            # "keyed below the run before": the runs are in update order, but "new" is
            # keyed below "old"'s seq (a delete_latest of "new" would then list it
            # first however old it became)
            seq = new.seq + 1 if what == "out of order" else new.wseq + 1
            wrong = msgspec.structs.replace(old, seq=seq, wseq=old.seq)
            txn.delete(_keys.recent_key(old.seq))
            txn.put(_keys.recent_key(seq), _keys.U64.pack(old.run_no))
            txn.put(_keys.header_key(old.run_no), msgspec.msgpack.encode(wrong))
    env.close()
    with steplog.open(path) as store:
        problems = store.verify().problems
    found = [p for p in problems if p.kind == "index" and p.run_id in ("old", "new")]
    if what == "keyed elsewhere":
        assert [p.detail for p in found] == [f"stale workflow entry ('wf', seq {new.wseq})"]
    else:
        assert [p.detail for p in found] == ["workflow 'wf' lists it out of order"]
