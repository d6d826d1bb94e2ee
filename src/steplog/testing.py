"""The store contract as a reusable pytest suite.

Any backend proves it is a steplog store by subclassing :class:`StoreContract` in a
test module and saying how to open it::

    from steplog.testing import StoreContract

    class TestMyBackend(StoreContract):
        def open_store(self, path):
            return MyBackend(path)

``open_store(path)`` must return an object with the :class:`steplog.Store` API;
calling it twice with the same path must reopen the same data. Requires pytest.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import msgspec
import pytest

from steplog import (
    CheckpointNotFound,
    ForkPointInUse,
    IndexConflict,
    InvalidArgument,
    RunExists,
    RunNotFound,
    SchemaMismatch,
    Status,
    StoreClosed,
    WorkflowMismatch,
)
from steplog._keys import MAX_ID_BYTES

__all__ = ["StoreContract"]


class Order(msgspec.Struct):
    item: str
    qty: int
    notes: list[str] = []


@dataclasses.dataclass
class OrderDC:
    item: str
    qty: int


class OrderTD(TypedDict):
    item: str
    qty: int


class StoreContract(abc.ABC):
    """Behaviour every steplog backend must show. Subclasses define ``open_store``."""

    @abc.abstractmethod
    def open_store(self, path: Path) -> Any:
        """Open (or reopen) the backend's store at ``path``."""

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "store"

    @pytest.fixture
    def store(self, path: Path) -> Iterator[Any]:
        store = self.open_store(path)
        try:
            yield store
        finally:
            store.close()

    # ------------------------------------------------------------------ append / load

    def test_latest_after_save(self, store: Any) -> None:
        saved = store.append("run-1", {"step": 1}, workflow_id="wf")
        loaded = store.load("run-1")
        assert loaded == saved
        assert loaded.run_id == "run-1" and loaded.index == 0
        assert loaded.workflow_id == "wf"
        assert loaded.status is Status.RUNNING

    def test_indices_are_dense_in_append_order(self, store: Any) -> None:
        got = [store.append("r", {"i": i}).index for i in range(5)]
        assert got == [0, 1, 2, 3, 4]
        assert store.load("r").state == {"i": 4}
        assert store.run("r").length == 5

    def test_load_by_index_returns_that_checkpoint(self, store: Any) -> None:
        for i in range(4):
            store.append("r", {"i": i}, node=f"n{i}")
        assert store.load("r", 2).state == {"i": 2}
        assert store.load("r", 2).node == "n2"
        assert store.load("r", 0).state == {"i": 0}

    def test_negative_index_counts_from_end(self, store: Any) -> None:
        for i in range(3):
            store.append("r", i)
        assert store.load("r", -1).index == 2
        assert store.load("r", -3).index == 0
        assert store.load("r", -4) is None

    def test_load_missing_returns_none(self, store: Any) -> None:
        assert store.load("nope") is None
        store.append("r", 1)
        assert store.load("r", 1) is None
        assert store.load("r", node="ghost") is None

    def test_checkpoint_fields_round_trip(self, store: Any) -> None:
        before = datetime.now(UTC)
        cp = store.append(
            "r",
            {"msgs": ["hi"], "n": 1.5, "nested": {"a": [1, 2, None]}},
            workflow_id="wf",
            node="plan",
            status=Status.AWAITING_INPUT,
            metadata={"user": "ann", "attempt": 2, "ok": True, "score": 0.5, "x": None},
        )
        loaded = store.load("r")
        assert loaded == cp
        assert loaded.created_at.tzinfo is not None
        assert before.replace(microsecond=0) <= loaded.created_at <= datetime.now(UTC)
        assert loaded.metadata == {"user": "ann", "attempt": 2, "ok": True, "score": 0.5, "x": None}
        assert loaded.parent_run_id is None and loaded.parent_index is None

    def test_status_accepts_its_string_value(self, store: Any) -> None:
        store.append("r", 1, status="completed")
        assert store.load("r").status is Status.COMPLETED
        assert store.run("r").status is Status.COMPLETED

    def test_workflow_is_fixed_by_first_append(self, store: Any) -> None:
        store.append("r", 1, workflow_id="wf")
        assert store.append("r", 2).workflow_id == "wf"
        assert store.append("r", 3, workflow_id="wf").index == 2
        with pytest.raises(WorkflowMismatch):
            store.append("r", 4, workflow_id="other")
        assert store.run("r").length == 3

    def test_compare_and_append(self, store: Any) -> None:
        assert store.append("r", 0, expected_index=0).index == 0
        assert store.append("r", 1, expected_index=1).index == 1
        with pytest.raises(IndexConflict) as info:
            store.append("r", "lost", expected_index=1)
        assert info.value.actual == 2 and info.value.expected == 1
        assert "'r'" in str(info.value)
        assert store.run("r").length == 2
        assert store.load("r").state == 1

    def test_compare_and_append_on_new_run(self, store: Any) -> None:
        with pytest.raises(IndexConflict) as info:
            store.append("fresh", 1, expected_index=3)
        assert info.value.actual == 0
        assert store.run("fresh") is None

    def test_latest_by_node(self, store: Any) -> None:
        store.append("r", "a0", node="a")
        store.append("r", "b0", node="b")
        store.append("r", "a1", node="a")
        store.append("r", "none")
        assert store.load("r", node="a").state == "a1"
        assert store.load("r", node="a").index == 2
        assert store.load("r", node="b").index == 1

    def test_history_of_one_node(self, store: Any) -> None:
        for i in range(6):
            store.append("r", i, node="even" if i % 2 == 0 else "odd")
        assert [c.state for c in store.history("r", node="even")] == [0, 2, 4]
        assert [c.index for c in store.history("r", node="odd", start=2)] == [3, 5]
        assert list(store.history("r", node="none")) == []

    def test_node_names_are_not_prefixes_of_each_other(self, store: Any) -> None:
        store.append("r", "long", node="ab")
        store.append("r", "short", node="a")
        store.append("r", "longer", node="ab")
        assert store.load("r", node="a").state == "short"
        assert store.load("r", node="ab").index == 2

    # ------------------------------------------------------------------ typed load

    def test_typed_load_into_struct(self, store: Any) -> None:
        store.append("r", Order("tea", 2, ["hot"]))
        got = store.load("r", type=Order)
        assert got.state == Order("tea", 2, ["hot"])

    def test_typed_load_into_dataclass_and_typeddict(self, store: Any) -> None:
        store.append("r", OrderDC("tea", 2))
        assert store.load("r", type=OrderDC).state == OrderDC("tea", 2)
        assert store.load("r", type=OrderTD).state == {"item": "tea", "qty": 2}
        assert store.load("r").state == {"item": "tea", "qty": 2}

    def test_typed_load_into_builtins(self, store: Any) -> None:
        store.append("r", [1, 2, 3])
        assert store.load("r", type=tuple[int, ...]).state == (1, 2, 3)
        assert store.load("r", type=list[int]).state == [1, 2, 3]

    def test_typed_load_that_does_not_fit(self, store: Any) -> None:
        store.append("r", {"item": "tea", "qty": "two"})
        with pytest.raises(SchemaMismatch) as info:
            store.load("r", type=Order)
        assert info.value.run_id == "r" and info.value.index == 0
        with pytest.raises(SchemaMismatch):
            list(store.history("r", type=Order))

    def test_typed_history(self, store: Any) -> None:
        for i in range(3):
            store.append("r", Order("x", i))
        assert [c.state.qty for c in store.history("r", type=Order)] == [0, 1, 2]

    # ------------------------------------------------------------------ history

    def test_history_is_ordered(self, store: Any) -> None:
        for i in range(10):
            store.append("r", {"i": i})
        assert [c.index for c in store.history("r")] == list(range(10))
        assert [c.state["i"] for c in store.history("r", start=7)] == [7, 8, 9]
        assert [c.index for c in store.history("r", start=2, stop=5)] == [2, 3, 4]
        assert [c.index for c in store.history("r", start=-2)] == [8, 9]
        assert list(store.history("r", start=20)) == []

    def test_history_spans_many_chunks(self, store: Any) -> None:
        for i in range(700):
            store.append("r", i)
        assert [c.state for c in store.history("r")] == list(range(700))

    def test_history_of_interleaved_runs_stays_separate(self, store: Any) -> None:
        for i in range(5):
            store.append("a", f"a{i}")
            store.append("b", f"b{i}")
        assert [c.state for c in store.history("a")] == [f"a{i}" for i in range(5)]
        assert [c.state for c in store.history("b")] == [f"b{i}" for i in range(5)]

    def test_history_of_missing_run(self, store: Any) -> None:
        with pytest.raises(RunNotFound):
            store.history("ghost")

    # ------------------------------------------------------------------ runs / latest

    def test_latest_of_workflow(self, store: Any) -> None:
        assert store.latest("wf") is None
        store.append("r1", "one", workflow_id="wf")
        store.append("r2", "two", workflow_id="wf")
        store.append("other", "x", workflow_id="wf2")
        assert store.latest("wf").state == "two"
        store.append("r1", "three")
        assert store.latest("wf").run_id == "r1"
        assert store.latest("wf").state == "three"
        assert store.latest("wf2").state == "x"

    def test_workflow_names_are_not_prefixes_of_each_other(self, store: Any) -> None:
        store.append("r1", "short", workflow_id="w")
        store.append("r2", "long", workflow_id="wx")
        assert store.latest("w").state == "short"
        assert [r.run_id for r in store.runs("w")] == ["r1"]

    def test_runs_newest_updated_first(self, store: Any) -> None:
        store.append("a", 1, workflow_id="wf")
        store.append("b", 1, workflow_id="wf")
        store.append("c", 1)
        store.append("a", 2)
        assert [r.run_id for r in store.runs()] == ["a", "c", "b"]
        assert [r.run_id for r in store.runs("wf")] == ["a", "b"]
        assert [r.run_id for r in store.runs(limit=2)] == ["a", "c"]
        assert store.runs(limit=0) == []
        assert store.runs("none") == []

    def test_runs_filtered_by_status(self, store: Any) -> None:
        store.append("a", 1, status=Status.COMPLETED)
        store.append("b", 1, status=Status.FAILED)
        store.append("c", 1)
        store.append("c", 2, status=Status.COMPLETED)
        assert [r.run_id for r in store.runs(status=Status.COMPLETED)] == ["c", "a"]
        assert [r.run_id for r in store.runs(status="failed")] == ["b"]

    def test_run_info(self, store: Any) -> None:
        assert store.run("r") is None
        store.append("r", 1, workflow_id="wf")
        last = store.append("r", 2, status=Status.INTERRUPTED)
        info = store.run("r")
        assert info.run_id == "r" and info.workflow_id == "wf" and info.length == 2
        assert info.status is Status.INTERRUPTED
        assert info.updated_at == last.created_at
        assert info.created_at <= info.updated_at

    # ------------------------------------------------------------------ fork / lineage

    def test_fork_copies_state_with_overrides(self, store: Any) -> None:
        store.append("src", {"a": 1, "b": 2}, workflow_id="wf", node="n")
        store.append("src", {"a": 10, "b": 20})
        cp = store.fork("src", 0, "kid", overrides={"b": 99, "c": 3})
        assert cp.run_id == "kid" and cp.index == 0
        assert cp.state == {"a": 1, "b": 99, "c": 3}
        assert cp.parent_run_id == "src" and cp.parent_index == 0
        assert cp.workflow_id == "wf" and cp.node == "n"
        assert store.load("kid") == cp
        info = store.run("kid")
        assert info.parent_run_id == "src" and info.parent_index == 0

    def test_fork_never_mutates_source(self, store: Any) -> None:
        store.append("src", {"a": [1, 2]}, workflow_id="wf")
        store.append("src", {"a": [1, 2, 3]})
        before = list(store.history("src"))
        before_info = store.run("src")
        store.fork("src", 0, "kid", overrides={"a": ["changed"]})
        store.append("kid", {"a": ["kid only"]})
        assert list(store.history("src")) == before
        assert store.run("src") == before_info

    def test_fork_with_struct_overrides_on_struct_state(self, store: Any) -> None:
        store.append("src", Order("tea", 1, ["a"]))
        store.fork("src", -1, "kid", overrides={"qty": 5})
        assert store.load("kid", type=Order).state == Order("tea", 5, ["a"])

    def test_fork_run_continues_independently(self, store: Any) -> None:
        store.append("src", 0)
        store.append("src", 1)
        store.fork("src", 0, "kid")
        assert store.append("kid", "k1").index == 1
        assert store.append("src", 2).index == 2
        assert [c.state for c in store.history("kid")] == [0, "k1"]

    def test_fork_into_other_workflow(self, store: Any) -> None:
        store.append("src", 0, workflow_id="wf")
        store.fork("src", 0, "kid", workflow_id="sandbox")
        assert store.run("kid").workflow_id == "sandbox"
        assert store.latest("sandbox").run_id == "kid"

    def test_fork_errors(self, store: Any) -> None:
        store.append("src", 0)
        store.append("taken", 0)
        with pytest.raises(RunNotFound):
            store.fork("ghost", 0, "kid")
        with pytest.raises(CheckpointNotFound) as info:
            store.fork("src", 5, "kid")
        assert info.value.run_id == "src" and info.value.index == 5
        with pytest.raises(RunExists):
            store.fork("src", 0, "taken")
        with pytest.raises(InvalidArgument):
            store.fork("src", 0, "kid", overrides=["not", "a", "mapping"])
        assert store.run("kid") is None

    def test_lineage_chain(self, store: Any) -> None:
        store.append("root", 0)
        store.append("root", 1)
        store.fork("root", 1, "child")
        store.append("child", 2)
        store.fork("child", 1, "grandchild")
        chain = store.lineage("grandchild")
        assert [r.run_id for r in chain] == ["grandchild", "child", "root"]
        assert [(r.parent_run_id, r.parent_index) for r in chain] == [
            ("child", 1),
            ("root", 1),
            (None, None),
        ]
        assert [r.run_id for r in store.lineage("root")] == ["root"]
        with pytest.raises(RunNotFound):
            store.lineage("ghost")

    def test_lineage_ends_at_purged_ancestor(self, store: Any) -> None:
        store.append("root", 0)
        store.fork("root", 0, "child")
        store.fork("child", 0, "grandchild")
        store.purge("child")
        chain = store.lineage("grandchild")
        assert [r.run_id for r in chain] == ["grandchild"]
        assert chain[0].parent_run_id == "child"

    def test_lineage_ignores_a_new_run_reusing_a_purged_parent_id(self, store: Any) -> None:
        store.append("p", 0)
        store.fork("p", 0, "kid")
        store.purge("p")
        store.append("p", "reborn")
        assert [r.run_id for r in store.lineage("kid")] == ["kid"]

    # ------------------------------------------------------------------ delete / purge

    def test_delete_latest_removes_only_the_tail(self, store: Any) -> None:
        for i in range(3):
            store.append("r", {"i": i}, node="n", status=Status.RUNNING if i < 2 else "completed")
        gone = store.delete_latest("r")
        assert gone.index == 2 and gone.state == {"i": 2}
        assert store.run("r").length == 2
        assert store.run("r").status is Status.RUNNING
        assert store.load("r").index == 1
        assert store.load("r", node="n").index == 1
        assert [c.index for c in store.history("r")] == [0, 1]
        assert store.append("r", "again").index == 2

    def test_delete_latest_restores_workflow_latest(self, store: Any) -> None:
        store.append("a", "a0", workflow_id="wf")
        store.append("b", "b0", workflow_id="wf")
        store.append("b", "b1")
        store.delete_latest("b")
        assert store.latest("wf").state == "b0"
        store.delete_latest("b")
        assert store.latest("wf").state == "a0"

    def test_delete_latest_to_empty(self, store: Any) -> None:
        store.append("r", 0)
        assert store.delete_latest("r").index == 0
        assert store.delete_latest("r") is None
        assert store.load("r") is None
        assert store.run("r").length == 0
        assert list(store.history("r")) == []
        assert store.append("r", "fresh").index == 0

    def test_delete_latest_refuses_a_fork_point(self, store: Any) -> None:
        store.append("src", 0)
        store.append("src", 1)
        store.fork("src", 1, "kid-a")
        store.fork("src", -1, "kid-b")
        with pytest.raises(ForkPointInUse) as info:
            store.delete_latest("src")
        assert sorted(info.value.children) == ["kid-a", "kid-b"]
        assert "kid-a" in str(info.value) and "kid-b" in str(info.value)
        assert store.run("src").length == 2
        store.purge("kid-a")
        store.purge("kid-b")
        assert store.delete_latest("src").index == 1

    def test_delete_latest_of_missing_run(self, store: Any) -> None:
        with pytest.raises(RunNotFound):
            store.delete_latest("ghost")

    def test_purge_removes_everything(self, store: Any) -> None:
        for i in range(5):
            store.append("r", i, workflow_id="wf", node="n")
        store.append("keep", "k", workflow_id="wf")
        assert store.purge("r") == 5
        assert store.run("r") is None
        assert store.load("r") is None
        assert store.load("r", node="n") is None
        assert [r.run_id for r in store.runs()] == ["keep"]
        assert [r.run_id for r in store.runs("wf")] == ["keep"]
        assert store.latest("wf").run_id == "keep"
        with pytest.raises(RunNotFound):
            store.purge("r")
        assert store.append("r", "new").index == 0
        assert store.load("r", node="n") is None

    def test_forks_survive_purge_of_parent(self, store: Any) -> None:
        store.append("src", {"v": 1})
        store.append("src", {"v": 2})
        store.fork("src", 1, "kid")
        store.append("kid", {"v": 3})
        store.purge("src")
        assert [c.state for c in store.history("kid")] == [{"v": 2}, {"v": 3}]
        assert store.load("kid", 0).parent_run_id == "src"

    def test_purging_a_fork_frees_the_fork_point(self, store: Any) -> None:
        store.append("src", 0)
        store.fork("src", 0, "kid")
        store.purge("kid")
        assert store.delete_latest("src").index == 0

    # ------------------------------------------------------------------ durability

    def test_reopen_keeps_everything(self, path: Path) -> None:
        store = self.open_store(path)
        store.append("r", {"i": 0}, workflow_id="wf", node="n")
        store.append("r", {"i": 1}, status="completed")
        store.fork("r", 0, "kid")
        before = (list(store.history("r")), store.runs(), store.lineage("kid"))
        store.close()
        store = self.open_store(path)
        try:
            assert (list(store.history("r")), store.runs(), store.lineage("kid")) == before
            assert store.latest("wf").run_id == "kid"
            assert store.load("r", node="n").index == 0
            assert store.append("r", {"i": 2}).index == 2
            report = store.verify()
            assert report.ok, report.problems
            assert (report.runs, report.records) == (2, 4)
        finally:
            store.close()

    # ------------------------------------------------------------------ errors

    @pytest.mark.parametrize(
        "bad_id",
        ["", 42, None, b"bytes", "nul\x00byte", "x" * (MAX_ID_BYTES + 1), "\ud800"],
        ids=["empty", "int", "none", "bytes", "nul", "too-long", "surrogate"],
    )
    def test_bad_run_ids_are_rejected(self, store: Any, bad_id: Any) -> None:
        calls: tuple[Callable[[], object], ...] = (
            lambda: store.append(bad_id, 1),
            lambda: store.load(bad_id),
            lambda: store.run(bad_id),
            lambda: store.history(bad_id),
            lambda: store.purge(bad_id),
            lambda: store.delete_latest(bad_id),
            lambda: store.lineage(bad_id),
            lambda: store.fork(bad_id, 0, "x"),
        )
        for call in calls:
            with pytest.raises(InvalidArgument):
                call()
        assert store.runs() == []

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"workflow_id": ""},
            {"workflow_id": 3},
            {"node": "a\x00b"},
            {"node": ""},
            {"status": "sleeping"},
            {"status": 1},
            {"metadata": {"nested": {"a": 1}}},
            {"metadata": {1: "int key"}},
            {"metadata": ["not", "mapping"]},
            {"metadata": {"big": 2**70}},
            {"metadata": {"huge": "x" * 100_000}},
            {"metadata": {f"k{i}": i for i in range(1000)}},
            {"expected_index": -1},
            {"expected_index": "0"},
            {"expected_index": True},
        ],
    )
    def test_bad_append_arguments_write_nothing(self, store: Any, kwargs: dict[str, Any]) -> None:
        store.append("r", "first")
        with pytest.raises(InvalidArgument):
            store.append("r", "second", **kwargs)
        assert store.run("r").length == 1
        assert store.load("r").state == "first"

    @pytest.mark.parametrize(
        "state",
        [object(), {1j: 2}, {"f": lambda: 1}, 2**80],
        ids=["object", "complex-key", "function", "bigint"],
    )
    def test_unencodable_state_writes_nothing(self, store: Any, state: Any) -> None:
        with pytest.raises(InvalidArgument):
            store.append("r", state)
        assert store.run("r") is None
        assert store.runs() == []

    def test_bad_read_arguments(self, store: Any) -> None:
        store.append("r", 1)
        with pytest.raises(InvalidArgument):
            store.load("r", "0")
        with pytest.raises(InvalidArgument):
            store.load("r", 0, node="n")
        with pytest.raises(InvalidArgument):
            store.runs(limit=-1)
        with pytest.raises(InvalidArgument):
            store.runs(status="bogus")
        with pytest.raises(InvalidArgument):
            store.history("r", start="a")
        with pytest.raises(InvalidArgument):
            store.fork("r", 1.0, "kid")

    def test_closed_store_refuses_every_call(self, path: Path) -> None:
        store = self.open_store(path)
        store.append("r", 1)
        store.close()
        store.close()
        calls: tuple[Callable[[], object], ...] = (
            lambda: store.append("r", 2),
            lambda: store.load("r"),
            lambda: store.latest("wf"),
            lambda: store.runs(),
            lambda: store.run("r"),
            lambda: store.history("r"),
            lambda: store.fork("r", 0, "k"),
            lambda: store.lineage("r"),
            lambda: store.delete_latest("r"),
            lambda: store.purge("r"),
        )
        for call in calls:
            with pytest.raises(StoreClosed):
                call()
