"""StepLogSaver's mapping onto steplog runs: pending writes share their checkpoints'
run (and delta chain); stores written with the older two-run layout still read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph")

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6

from steplog.langgraph import StepLogSaver
from steplog.store import _View

SEP = "\x1f"


def _cp(i: int, messages: list[str]) -> Any:
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=i))
    cp["channel_values"] = {"messages": messages}
    cp["channel_versions"] = {"messages": i + 1}
    return cp


def _cfg(thread: str, cid: str | None = None) -> Any:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if cid:
        conf["checkpoint_id"] = cid
    return {"configurable": conf}


def _chat(saver: StepLogSaver, thread: str, steps: int) -> list[str]:
    """put + put_writes per step, like a graph's loop; returns the checkpoint ids."""
    config, ids, messages = _cfg(thread), [], []
    for i in range(steps):
        message = f"message {i}: " + "lorem ipsum dolor sit amet " * (20 + i % 7)
        messages = [*messages, message]
        cp = _cp(i, messages)
        config = saver.put(config, cp, {"step": i}, cp["channel_versions"])
        saver.put_writes(config, [("messages", message)], f"task-{i}")
        ids.append(cp["id"])
    return ids


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_pending_writes_share_the_checkpoints_run_and_its_delta_chain(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        ids = _chat(saver, "t", 30)
        assert [i.run_id for i in saver.store.runs()] == [f"lg{SEP}c{SEP}t{SEP}"]
        latest = saver.get_tuple(_cfg("t"))
        assert latest is not None and latest.checkpoint["id"] == ids[-1]
        assert [w[2] for w in latest.pending_writes] == [
            latest.checkpoint["channel_values"]["messages"][-1]
        ]
        listed = list(saver.list(_cfg("t")))
        assert [t.checkpoint["id"] for t in listed] == ids[::-1]
        assert all(len(t.pending_writes) == 1 for t in listed)
        # a writes record repeats a message its checkpoint holds: stored as a small delta
        sizes = saver.store._read(
            lambda txn: [len(v) for k, v in txn.cursor() if k.startswith(b"S") and len(k) == 18]
        )
        writes_records = sizes[3::2]  # index 1 is the writes of the first, keyframed step
        assert max(writes_records) < 120


def test_a_checkpoint_and_its_writes_take_one_node_entry(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        ids = _chat(saver, "t", 3)
        saver.put_writes(_cfg("t", ids[-1]), [("messages", "second task")], "task-b")
        saver.put_writes(_cfg("t", ids[0]), [("messages", "late")], "task-late")
        run = "lg\x1fc\x1ft\x1f"
        nodes = saver.store._view(lambda view: _View.nodes_below(view, run, None, 10))
        # (id, first index, streak length): each put and the writes right after it
        # share a streak; a late write to an older checkpoint starts one of its own
        streaks: list[tuple[str, int, int]] = []
        for node, indices in nodes:
            for i in indices:
                if streaks and streaks[-1][0] == node and sum(streaks[-1][1:]) == i:
                    streaks[-1] = (node, streaks[-1][1], streaks[-1][2] + 1)
                else:
                    streaks.append((node, i, 1))
        assert sorted(streaks, key=lambda e: e[1]) == [
            (ids[0], 0, 2),
            (ids[1], 2, 2),
            (ids[2], 4, 3),
            (ids[0], 7, 1),
        ]
        assert [w[2] for w in saver.get_tuple(_cfg("t", ids[0])).pending_writes] == [
            "message 0: " + "lorem ipsum dolor sit amet " * 20,
            "late",
        ]
        assert saver.store.verify().ok


def test_latest_is_the_greatest_checkpoint_id_even_after_writes_to_an_older_one(
    path: Path,
) -> None:
    with StepLogSaver.from_path(path) as saver:
        ids = _chat(saver, "t", 5)
        # time travel: a task of an older checkpoint writes after the newest one
        saver.put_writes(_cfg("t", ids[1]), [("messages", "late")], "task-late")
        latest = saver.get_tuple(_cfg("t"))
        assert latest is not None and latest.checkpoint["id"] == ids[-1]
        old = saver.get_tuple(_cfg("t", ids[1]))
        assert old is not None and [w[2] for w in old.pending_writes][-1] == "late"
        # writes for an id that was never put make no checkpoint
        ghost = str(uuid6(clock_seq=99))
        saver.put_writes(_cfg("t", ghost), [("messages", "ghost")], "task-ghost")
        assert saver.get_tuple(_cfg("t", ghost)) is None
        latest = saver.get_tuple(_cfg("t"))
        assert latest is not None and latest.checkpoint["id"] == ids[-1]
        assert [t.checkpoint["id"] for t in saver.list(_cfg("t"))] == ids[::-1]
        saver.prune(["t"])
        assert [t.checkpoint["id"] for t in saver.list(_cfg("t"))] == [ids[-1]]
        kept = saver.get_tuple(_cfg("t"))
        assert kept is not None and len(kept.pending_writes) == 1


def test_a_store_written_with_the_two_run_layout_still_reads(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        ids = _chat(saver, "t", 4)
        # rewrite the thread as the older layout did: writes in a second run
        store, workflow = saver.store, f"lg{SEP}t"
        c_run, w_run = f"lg{SEP}c{SEP}t{SEP}", f"lg{SEP}w{SEP}t{SEP}"
        records = list(store.history(c_run))
        with store.batch() as b:
            b.purge(c_run)
            for r in records:
                run = c_run if "c" in r.state else w_run
                b.append(run, r.state, workflow_id=workflow, node=r.node)
        assert {i.run_id for i in store.runs()} == {c_run, w_run}
    with StepLogSaver.from_path(path) as saver:  # a saver opening such a store
        for cid in ids:
            got = saver.get_tuple(_cfg("t", cid))
            assert got is not None and len(got.pending_writes) == 1
        latest = saver.get_tuple(_cfg("t"))
        assert latest is not None and latest.checkpoint["id"] == ids[-1]
        assert len(latest.pending_writes) == 1
        listed = list(saver.list(_cfg("t")))
        assert [t.checkpoint["id"] for t in listed] == ids[::-1]
        assert all(len(t.pending_writes) == 1 for t in listed)
        # new writes land in the checkpoints' run; both are read, older layout first
        saver.put_writes(_cfg("t", ids[-1]), [("extra", 1)], "task-x")
        latest = saver.get_tuple(_cfg("t"))
        assert latest is not None and [w[1] for w in latest.pending_writes] == ["messages", "extra"]
        saver.prune(["t"])
        kept = list(saver.list(_cfg("t")))
        assert [t.checkpoint["id"] for t in kept] == [ids[-1]]
        assert [w[1] for w in kept[0].pending_writes] == ["messages", "extra"]


def test_an_id_put_twice_lists_as_get_tuple_reads_it(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        ids = _chat(saver, "t", 3)
        again = _cp(1, ["rewritten"])
        again["id"] = ids[1]
        config = saver.put(_cfg("t", ids[0]), again, {"step": 1}, again["channel_versions"])
        saver.put_writes(config, [("messages", "after the second put")], "task-again")
        got = saver.get_tuple(_cfg("t", ids[1]))
        assert got is not None and got.checkpoint["channel_values"]["messages"] == ["rewritten"]
        assert len(got.pending_writes) == 2
        listed = {t.checkpoint["id"]: t for t in saver.list(_cfg("t"))}
        assert sorted(listed) == sorted(ids)  # each id once
        assert listed[ids[1]].checkpoint == got.checkpoint
        assert listed[ids[1]].pending_writes == got.pending_writes
