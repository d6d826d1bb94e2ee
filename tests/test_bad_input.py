"""Bad input across the whole public API: a typed error, and the store byte-for-byte
unchanged (a full dump of the key space before and after)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import steplog
from steplog import _keys
from steplog.errors import (
    CheckpointNotFound,
    IndexConflict,
    InvalidArgument,
    RecordTooLarge,
    RunExists,
    RunNotFound,
    StepLogError,
    StoreClosed,
    WorkflowMismatch,
)

BIG = "x" * 500


def _dump(store: steplog.Store) -> list[tuple[bytes, bytes]]:
    def all_items(txn: Any) -> list[tuple[bytes, bytes]]:
        return list(txn.cursor())

    return store._read(all_items)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _looped() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


CASES: list[tuple[str, Callable[[steplog.Store], Any], type[StepLogError]]] = [
    ("append int run id", lambda s: s.append(7, {}), InvalidArgument),
    ("append empty run id", lambda s: s.append("", {}), InvalidArgument),
    ("append oversize run id", lambda s: s.append(BIG, {}), InvalidArgument),
    ("append NUL run id", lambda s: s.append("a\x00b", {}), InvalidArgument),
    ("append bytes run id", lambda s: s.append(b"run", {}), InvalidArgument),
    ("append unencodable state", lambda s: s.append("r", {"f": print}), InvalidArgument),
    ("append set with unhashable", lambda s: s.append("r", object()), InvalidArgument),
    ("append huge int", lambda s: s.append("r", 1 << 70), InvalidArgument),
    ("append oversize state", lambda s: s.append("r", "y" * (2 << 20)), RecordTooLarge),
    ("append self-referencing state", lambda s: s.append("r", _looped()), InvalidArgument),
    ("append state nested too deep", lambda s: s.append("r", _nested(5000)), InvalidArgument),
    (
        "fork overrides nested too deep",
        lambda s: s.fork("r", 0, "new", overrides={"a": _nested(5000)}),
        InvalidArgument,
    ),
    ("append nested metadata", lambda s: s.append("r", 1, metadata={"a": [1]}), InvalidArgument),
    (
        "append huge metadata",
        lambda s: s.append("r", 1, metadata={"a": "z" * 10**5}),
        InvalidArgument,
    ),
    (
        "append many metadata keys",
        lambda s: s.append("r", 1, metadata={str(i): i for i in range(999)}),
        InvalidArgument,
    ),
    ("append NUL node", lambda s: s.append("r", 1, node="\x00"), InvalidArgument),
    ("append bad status", lambda s: s.append("r", 1, status="paused"), InvalidArgument),
    ("append other workflow", lambda s: s.append("r", 1, workflow_id="other"), WorkflowMismatch),
    ("append stale expected", lambda s: s.append("r", 1, expected_index=0), IndexConflict),
    ("append negative expected", lambda s: s.append("r", 1, expected_index=-1), InvalidArgument),
    ("append_many one bad", lambda s: s.append_many("r", [1, 2, object()]), InvalidArgument),
    ("append_many stale", lambda s: s.append_many("r", [1, 2], expected_index=1), IndexConflict),
    ("load float index", lambda s: s.load("r", 1.5), InvalidArgument),
    ("load bool index", lambda s: s.load("r", True), InvalidArgument),
    ("load index and node", lambda s: s.load("r", 0, node="n"), InvalidArgument),
    ("load bad type", lambda s: s.load("r", type=42), InvalidArgument),
    ("runs negative limit", lambda s: s.runs(limit=-5), InvalidArgument),
    ("runs bad status", lambda s: s.runs(status="nope"), InvalidArgument),
    ("history missing run", lambda s: s.history("ghost"), RunNotFound),
    ("history bad start", lambda s: s.history("r", start="0"), InvalidArgument),
    ("fork to existing run", lambda s: s.fork("r", 0, "other-run"), RunExists),
    ("fork from missing index", lambda s: s.fork("r", 99, "new"), CheckpointNotFound),
    ("fork from negative out of range", lambda s: s.fork("r", -99, "new"), CheckpointNotFound),
    ("fork from missing run", lambda s: s.fork("ghost", 0, "new"), RunNotFound),
    ("fork list overrides", lambda s: s.fork("r", 0, "new", overrides=[1]), InvalidArgument),
    (
        "fork unencodable overrides",
        lambda s: s.fork("r", 0, "new", overrides={"f": print}),
        InvalidArgument,
    ),
    (
        "fork overrides on non-mapping",
        lambda s: s.fork("scalar", 0, "new", overrides={"a": 1}),
        InvalidArgument,
    ),
    ("purge missing run", lambda s: s.purge("ghost"), RunNotFound),
    ("delete_latest missing run", lambda s: s.delete_latest("ghost"), RunNotFound),
    ("delete_latest fork point", lambda s: s.delete_latest("other-run"), steplog.ForkPointInUse),
    ("lineage missing run", lambda s: s.lineage("ghost"), RunNotFound),
    ("children missing run", lambda s: s.children("ghost"), RunNotFound),
]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = steplog.open(tmp_path / "s", max_record_size=1 << 20)
    s.append("r", {"a": 1}, workflow_id="wf", node="n")
    s.append("r", {"a": 2})
    s.append("other-run", {"b": 1})
    s.fork("other-run", 0, "kid")
    s.append("scalar", 5)
    yield s
    s.close()


@pytest.mark.parametrize(("name", "call", "error"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_typed_error_and_changes_nothing(
    store: steplog.Store, name: str, call: Callable[[steplog.Store], Any], error: type
) -> None:
    before = _dump(store)
    with pytest.raises(error) as info:
        call(store)
    assert isinstance(info.value, StepLogError)
    assert str(info.value)  # a message to read
    assert _dump(store) == before


def test_closed_store_calls_change_nothing(tmp_path: Path) -> None:
    s = steplog.open(tmp_path / "s")
    s.append("r", 1)
    s.close()
    for call in (lambda: s.append("r", 2), lambda: s.purge("r"), lambda: s.verify()):
        with pytest.raises(StoreClosed):
            call()
    env = lmdb.open(str(tmp_path / "s"), readonly=True, lock=False)
    with env.begin() as txn:
        assert sum(1 for key, _ in txn.cursor() if key.startswith(_keys.SEGMENT)) == 2
    env.close()


IDS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)
U64S = st.integers(0, 2**64 - 1)


@settings(max_examples=300)
@given(a=IDS, b=IDS, sa=U64S, sb=U64S)
def test_id_keys_are_injective_and_order_preserving(a: str, b: str, sa: int, sb: int) -> None:
    ka, kb = _keys.workflow_key(a.encode(), sa), _keys.workflow_key(b.encode(), sb)
    assert (ka == kb) == ((a, sa) == (b, sb))
    # byte order of keys = (UTF-8 bytes of the id, then seq) order
    assert (ka < kb) == ((a.encode(), sa) < (b.encode(), sb))
    # one id's range never holds another id's keys
    if a != b:
        assert not kb.startswith(_keys.workflow_prefix(a.encode()))
    na, nb = _keys.node_key(3, a.encode(), sa), _keys.node_key(3, b.encode(), sb)
    assert (na == nb) == ((a, sa) == (b, sb))
    assert (na < nb) == ((a.encode(), sa) < (b.encode(), sb))


@settings(max_examples=300)
@given(ra=U64S, rb=U64S, ia=U64S, ib=U64S)
def test_log_keys_are_injective_and_order_preserving(ra: int, rb: int, ia: int, ib: int) -> None:
    ka, kb = _keys.log_key(ra, ia), _keys.log_key(rb, ib)
    assert (ka == kb) == ((ra, ia) == (rb, ib))
    assert (ka < kb) == ((ra, ia) < (rb, ib))
    assert ka.startswith(_keys.log_prefix(ra)) and ka.startswith(_keys.segment_prefix(ra))
    assert kb.startswith(_keys.segment_prefix(ra)) == (ra == rb)
    assert _keys.log_index(ka) == ia


def test_a_state_nested_as_deep_as_append_allows_loads_from_any_depth(tmp_path: Path) -> None:
    """Nesting counts against Python's recursion limit together with the caller's
    frames: the deepest state append accepts must still load, list and verify when
    the caller sits deeper in its stack than the appender did."""
    depth = 2000
    with steplog.open(tmp_path / "probe") as probe:
        while True:  # the deepest state an append accepts from here
            try:
                probe.append("r", _nested(depth))
                break
            except InvalidArgument:
                depth -= 25

    def deep(frames: int, fn: Callable[[], Any]) -> Any:
        return fn() if frames == 0 else deep(frames - 1, fn)

    with steplog.open(tmp_path / "s") as store:
        store.append("r", _nested(depth))
        store.append("r", {"after": 1})
    with steplog.open(tmp_path / "s") as store:
        assert deep(200, lambda: store.load("r", 0)).state == _nested(depth)
        assert [c.index for c in deep(200, lambda: list(store.history("r")))] == [0, 1]
        assert deep(200, store.verify).ok


@pytest.mark.parametrize(
    "error",
    [
        steplog.errors.RecordTooLarge("r", 10, 5),
        RunNotFound("r"),
        CheckpointNotFound("r", 3, 2),
        RunExists("r"),
        IndexConflict("r", 1, 2),
        WorkflowMismatch("r", "a", "b"),
        steplog.ForkPointInUse("r", 0, ["kid"]),
        steplog.SchemaMismatch("r", 0, int, "not an int"),
        steplog.CorruptRecord("r", 0, "checksum mismatch"),
        StoreClosed("the store is closed"),
        InvalidArgument("bad"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_cross_process_boundaries_intact(error: StepLogError) -> None:
    """A worker's IndexConflict must reach a process pool's caller as itself (pickle
    is how multiprocessing returns exceptions), with its message and fields."""
    import pickle

    back = pickle.loads(pickle.dumps(error))  # what multiprocessing does; steplog never pickles
    assert type(back) is type(error) and str(back) == str(error)
    fields = {k: v for k, v in vars(error).items() if k != "type"}
    assert {k: v for k, v in vars(back).items() if k != "type"} == fields
