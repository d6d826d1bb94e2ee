"""Random operation sequences against the store and a plain in-memory model must agree,
also across close/reopen."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import steplog
from steplog import ForkPointInUse, IndexConflict, RunExists, RunNotFound, Status, WorkflowMismatch

RUN_IDS = st.sampled_from(["a", "b", "ab", "c/1", "ü", "a\x01"])
WORKFLOWS = st.sampled_from([None, "w", "wx", "w2"])
NODES = st.sampled_from([None, "n", "nn", "m"])
STATES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass
class Entry:
    state: Any
    node: str | None
    status: Status
    seq: int


@dataclass
class Run:
    workflow_id: str | None
    entries: list[Entry] = field(default_factory=list)
    parent: tuple[str, int] | None = None
    parent_generation: int = 0
    seq: int = 0
    generation: int = 0


class StoreVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="steplog-model-"))
        self.store = steplog.open(self.dir / "s", map_size=1 << 16)
        self.runs: dict[str, Run] = {}
        self.seq = 0
        self.generation = 0
        # children: (parent id, parent generation, index) -> set of child ids
        self.children: dict[tuple[str, int, int], set[str]] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _tick(self) -> int:
        self.seq += 1
        return self.seq

    @rule(
        run_id=RUN_IDS,
        state=STATES,
        wf=WORKFLOWS,
        node=NODES,
        status=st.sampled_from(Status),
        guess=st.none() | st.integers(0, 6),
    )
    def append(
        self,
        run_id: str,
        state: Any,
        wf: str | None,
        node: str | None,
        status: Status,
        guess: int | None,
    ) -> None:
        run = self.runs.get(run_id)
        length = len(run.entries) if run else 0
        if run is not None and wf is not None and wf != run.workflow_id:
            try:
                self.store.append(run_id, state, workflow_id=wf, node=node, status=status)
            except WorkflowMismatch:
                return
            raise AssertionError("workflow change was accepted")
        if guess is not None and guess != length:
            try:
                self.store.append(run_id, state, workflow_id=wf, expected_index=guess)
            except IndexConflict as exc:
                assert exc.actual == length
                return
            raise AssertionError("stale expected_index was accepted")
        cp = self.store.append(
            run_id, state, workflow_id=wf, node=node, status=status, expected_index=guess
        )
        assert cp.index == length
        if run is None:
            self.generation += 1
            run = self.runs[run_id] = Run(workflow_id=wf, generation=self.generation)
        run.entries.append(Entry(state, node, status, self._tick()))
        run.seq = self.seq

    @rule(
        src=RUN_IDS,
        index=st.integers(-3, 5),
        dst=RUN_IDS,
        overrides=st.none()
        | st.dictionaries(
            st.sampled_from(["k", "z"]), st.integers(-(2**63), 2**63 - 1), max_size=2
        ),
    )
    def fork(self, src: str, index: int, dst: str, overrides: dict[str, int] | None) -> None:
        run = self.runs.get(src)
        if run is None:
            try:
                self.store.fork(src, index, dst)
            except RunNotFound:
                return
            raise AssertionError("fork of a missing run was accepted")
        at = index + len(run.entries) if index < 0 else index
        if not 0 <= at < len(run.entries):
            try:
                self.store.fork(src, index, dst)
            except steplog.CheckpointNotFound:
                return
            raise AssertionError("fork of a missing index was accepted")
        if dst in self.runs:
            try:
                self.store.fork(src, index, dst)
            except RunExists:
                return
            raise AssertionError("fork onto an existing run was accepted")
        origin = run.entries[at]
        state = origin.state
        if overrides:
            if not isinstance(state, dict):
                try:
                    self.store.fork(src, index, dst, overrides=overrides)
                except steplog.InvalidArgument:
                    return
                raise AssertionError("overrides on a non-mapping state were accepted")
            state = {**state, **overrides}
        cp = self.store.fork(src, index, dst, overrides=overrides)
        assert cp.state == state and cp.parent_run_id == src and cp.parent_index == at
        self.generation += 1
        child = self.runs[dst] = Run(
            workflow_id=run.workflow_id,
            parent=(src, at),
            parent_generation=run.generation,
            generation=self.generation,
        )
        child.entries.append(Entry(state, origin.node, origin.status, self._tick()))
        child.seq = self.seq
        self.children.setdefault((src, run.generation, at), set()).add(dst)

    @rule(run_id=RUN_IDS)
    def delete_latest(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            try:
                self.store.delete_latest(run_id)
            except RunNotFound:
                return
            raise AssertionError("delete_latest of a missing run was accepted")
        if not run.entries:
            assert self.store.delete_latest(run_id) is None
            return
        index = len(run.entries) - 1
        kids = self.children.get((run_id, run.generation, index))
        if kids:
            try:
                self.store.delete_latest(run_id)
            except ForkPointInUse as exc:
                assert set(exc.children) == kids
                return
            raise AssertionError("delete of a fork point was accepted")
        gone = self.store.delete_latest(run_id)
        entry = run.entries.pop()
        assert gone is not None and gone.index == index and gone.state == entry.state
        run.seq = run.entries[-1].seq if run.entries else self._tick()

    @rule(run_id=RUN_IDS)
    def purge(self, run_id: str) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            try:
                self.store.purge(run_id)
            except RunNotFound:
                return
            raise AssertionError("purge of a missing run was accepted")
        assert self.store.purge(run_id) == len(run.entries)
        for key in [k for k in self.children if k[0] == run_id and k[1] == run.generation]:
            del self.children[key]
        for kids in self.children.values():
            kids.discard(run_id)

    @precondition(lambda self: self.runs)
    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = steplog.open(self.dir / "s", map_size=1 << 16)

    @invariant()
    def agrees_with_model(self) -> None:
        store = self.store
        report = store.verify()
        assert report.ok, report.problems
        assert report.runs == len(self.runs)
        assert report.records == sum(len(r.entries) for r in self.runs.values())
        assert [r.run_id for r in store.runs()] == [
            rid for rid, _ in sorted(self.runs.items(), key=lambda kv: -kv[1].seq)
        ]
        for rid, run in self.runs.items():
            info = store.run(rid)
            assert info is not None and info.length == len(run.entries)
            assert info.workflow_id == run.workflow_id
            assert (info.parent_run_id, info.parent_index) == (run.parent or (None, None))
            assert info.status == (run.entries[-1].status if run.entries else None)
            assert [(c.state, c.node, c.status) for c in store.history(rid)] == [
                (e.state, e.node, e.status) for e in run.entries
            ]
            latest = store.load(rid)
            assert (latest.index if latest else None) == (
                len(run.entries) - 1 if run.entries else None
            )
            for node in ("n", "nn", "m"):
                hits = [i for i, e in enumerate(run.entries) if e.node == node]
                got = store.load(rid, node=node)
                assert (got.index if got else None) == (hits[-1] if hits else None)
                assert [c.index for c in store.history(rid, node=node)] == hits
                mid = len(run.entries) // 2  # a window that may start inside a streak
                assert [c.index for c in store.history(rid, start=mid, node=node)] == [
                    i for i in hits if i >= mid
                ]
            chain, cur = [rid], run
            while cur.parent is not None:
                up = self.runs.get(cur.parent[0])
                if up is None or up.generation != cur.parent_generation:
                    break
                chain.append(cur.parent[0])
                cur = up
            assert [r.run_id for r in store.lineage(rid)] == chain
        for wf in ("w", "wx", "w2"):
            members = [(r.seq, rid) for rid, r in self.runs.items() if r.workflow_id == wf]
            assert [r.run_id for r in store.runs(wf)] == [
                rid for _, rid in sorted(members, reverse=True)
            ]
            nonempty = [
                (r.seq, rid) for rid, r in self.runs.items() if r.workflow_id == wf and r.entries
            ]
            got = store.latest(wf)
            assert (got.run_id if got else None) == (max(nonempty)[1] if nonempty else None)


StoreVersusModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestStoreVersusModel = StoreVersusModel.TestCase
