"""On-disk behaviour of the LMDB store: permissions, corruption, format, map growth."""

from __future__ import annotations

import os
import random
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import msgspec
import pytest

import steplog
from steplog import _keys, _record, _residency
from steplog.errors import (
    CorruptRecord,
    InvalidArgument,
    NotAStore,
    RecordTooLarge,
    StorageError,
    StoreClosed,
    UnsupportedFormat,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


def _rewrite_record(path: Path, run_no: int, index: int, mutate) -> None:  # type: ignore[no-untyped-def]
    """Change a stored record through LMDB (not the raw file), as a bad disk or bug would."""
    env = lmdb.open(str(path))
    try:
        with env.begin(write=True) as txn:
            key = _keys.log_key(run_no, index)
            raw = txn.get(key)
            assert raw is not None
            txn.put(key, mutate(bytearray(raw)))
    finally:
        env.close()


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "parents" / "s"  # missing parents are created private too
    old = os.umask(0)
    try:
        with steplog.open(path) as store:
            store.append("r", 1)
    finally:
        os.umask(old)
    for directory in (path, path.parent, path.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 0x01]),
        lambda b: b[: len(b) // 2],
        lambda b: b[:10],
        lambda b: bytes(len(b)),
        lambda b: b[:30] + bytes([b[30] ^ 0x80]) + b[31:],
        lambda b: b[:2] + bytes([b[2] ^ 0x04]) + b[3:],
    ],
    ids=["flip-last", "truncate-half", "truncate-header", "zeroed", "flip-body", "flip-status"],
)
@pytest.mark.parametrize("big", [False, True], ids=["keyframes", "deltas"])
def test_damaged_record_raises_corrupt_record(path: Path, mutate, big: bool) -> None:  # type: ignore[no-untyped-def]
    with steplog.open(path) as store:
        for i in range(3):
            # similar big states are stored as deltas; unrelated ones as keyframes
            text = "lorem ipsum dolor " * 100 if big else os.urandom(150).hex()
            store.append("r", {"i": i, "text": text + str(i)}, node="n")
    _rewrite_record(path, 1, 1, mutate)
    with steplog.open(path) as store:
        with pytest.raises(CorruptRecord) as info:
            store.load("r", 1)
        assert info.value.run_id == "r" and info.value.index == 1
        assert "'r'" in str(info.value)
        assert store.load("r", 0).state["i"] == 0
        if big:
            # Record 2 is a delta on record 1: it cannot be decoded without it, says so.
            with pytest.raises(CorruptRecord, match="delta base #1") as info:
                store.load("r", 2)
            assert info.value.index == 2
        else:
            assert store.load("r", 2).state["i"] == 2  # undamaged: still loads
        assert store.verify().damaged == [("r", 1)]
        with pytest.raises(CorruptRecord):
            list(store.history("r"))
        assert [c.index for c in store.history("r", stop=1)] == [0]


def test_compression_bomb_is_bounded(path: Path) -> None:
    """A record claiming a payload beyond max_record_size is refused before decoding."""
    with steplog.open(path) as store:
        store.append("r", "x")
    bomb, _ = _record.pack(b"\x00" * (8 << 20), seq=1, created_ns=0, status=steplog.Status.RUNNING)
    _rewrite_record(path, 1, 0, lambda _b: bomb)
    with steplog.open(path, max_record_size=1 << 20) as store:
        with pytest.raises(CorruptRecord, match="max_record_size"):
            store.load("r")


def test_oversize_state_is_refused(path: Path) -> None:
    with steplog.open(path, max_record_size=1024) as store:
        with pytest.raises(RecordTooLarge):
            store.append("r", "x" * 2048)
        assert store.run("r") is None
        store.append("r", "small")


def test_map_grows_under_a_burst(path: Path) -> None:
    with steplog.open(path, map_size=32 << 10) as store:
        blob = os.urandom(20_000).hex()
        for i in range(200):
            store.append(f"r{i % 7}", {"i": i, "blob": blob})
        assert sum(r.length for r in store.runs()) == 200
    with steplog.open(path, map_size=32 << 10) as store:
        assert store.load("r3", -1).state["blob"] == blob


def test_map_limit_gives_a_clear_error_and_loses_nothing(path: Path) -> None:
    with steplog.open(path, map_size=256 << 10, max_map_size=1 << 20) as store:
        written = 0
        with pytest.raises(StorageError, match="max_map_size"):
            for _i in range(1000):
                store.append("r", os.urandom(50_000))
                written += 1
        assert store.run("r").length == written
        assert store.purge("r") == written
        store.append("r", "room again")
        assert store.load("r").state == "room again"


def test_directory_that_is_not_a_store_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAStore):
        steplog.open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    afile = tmp_path / "notes.txt"
    with pytest.raises(NotAStore):
        steplog.open(afile)


def test_foreign_lmdb_environment_is_not_a_store(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "other"))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    before = (tmp_path / "other" / "data.mdb").read_bytes()
    with pytest.raises(NotAStore):
        steplog.open(tmp_path / "other")
    assert (tmp_path / "other" / "data.mdb").read_bytes() == before


def test_newer_format_is_refused_unchanged(path: Path) -> None:
    steplog.open(path).close()
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(_keys.META_FORMAT, msgspec.msgpack.encode({"magic": "steplog", "version": 99}))
    env.close()
    before = (path / "data.mdb").read_bytes()
    with pytest.raises(UnsupportedFormat, match="99"):
        steplog.open(path)
    assert (path / "data.mdb").read_bytes() == before


def test_handle_used_after_fork_raises(path: Path) -> None:
    store = steplog.open(path)
    store.append("r", 1)
    pid = os.fork()
    if pid == 0:  # child: every call must refuse, never touch LMDB
        code = 1
        try:
            store.append("r", 2)
        except StoreClosed:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.run("r").length == 1
    store.close()


def test_open_validates_options(path: Path) -> None:
    with pytest.raises(steplog.InvalidArgument):
        steplog.open(path, map_size=0)
    with pytest.raises(steplog.InvalidArgument):
        steplog.open(path, max_record_size=-1)
    with pytest.raises(steplog.InvalidArgument):
        steplog.open(path, max_map_size=0)
    for name in ("map_size", "max_map_size", "max_record_size"):
        with pytest.raises(steplog.InvalidArgument, match=name):
            steplog.open(path, **{name: 2**64})
    assert not path.exists()


def test_a_store_that_cannot_be_mapped_leaves_no_files(path: Path) -> None:
    path.mkdir()
    with pytest.raises(steplog.StorageError):
        steplog.open(path, map_size=2**62)  # more than the address space
    assert list(path.iterdir()) == []
    with steplog.open(path) as store:  # and the directory still makes a store
        store.append("r", 1)


def test_threads_append_concurrently(path: Path) -> None:
    import threading

    with steplog.open(path) as store:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(50):
                    store.append(f"t{n % 3}", {"n": n, "i": i})
                    store.load(f"t{n % 3}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(r.length for r in store.runs()) == [100, 150, 150]
        for r in store.runs():
            assert [c.index for c in store.history(r.run_id)] == list(range(r.length))


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "demo"


def test_demo_runs_and_is_repeatable(demo_dir: Path) -> None:
    import subprocess
    import sys

    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "steplog", "demo", "--path", str(demo_dir)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "killed by signal 9" in out
        assert "5 checkpoints, status completed" in out
        assert "forked from 'support-ticket-42' at #1" in out
        assert "On disk" in out


@pytest.mark.parametrize("content_size", [True, False])
def test_hostile_frame_that_lies_about_its_size_is_refused(path: Path, content_size: bool) -> None:
    """A tiny record whose zstd frame inflates to 256 MiB is refused without inflating."""
    import struct
    import zlib

    import zstandard

    with steplog.open(path) as store:
        store.append("r", "x")
    bomb = zstandard.ZstdCompressor(write_content_size=content_size).compress(b"\0" * (256 << 20))
    head = _record.HEADER.pack(1, _record.CODEC_ZSTD, 0, 0, 0, 1, 0, 100)
    crc = zlib.crc32(bomb, zlib.crc32(head[8:], zlib.crc32(head[:4])))
    record = head[:4] + struct.pack("<I", crc) + head[8:] + bomb
    assert len(record) < 64 << 10
    _rewrite_record(path, 1, 0, lambda _b: record)
    with steplog.open(path) as store:
        with pytest.raises(CorruptRecord, match="size"):
            store.load("r")
        assert store.verify().damaged == [("r", 0)]


def test_real_disk_full_fails_cleanly_and_recovers_when_space_returns(tmp_path: Path) -> None:
    """A 3 MiB tmpfs fills up: a clear StorageError, nothing acknowledged lost, and the
    store works again once the filesystem has room. Needs mount rights (root)."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        path = mnt / "s"
        acked: list[bytes] = []
        with steplog.open(path) as store:
            with pytest.raises(StorageError):
                for _ in range(1000):
                    blob = os.urandom(20_000)
                    store.append("r", blob)
                    acked.append(blob)
            assert len(acked) > 10
            assert store.run("r").length == len(acked)
            assert store.verify().ok
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        with steplog.open(path) as store:
            store.append("r", b"room again")
            assert [c.state for c in store.history("r")] == [*acked, b"room again"]
            assert store.verify().ok
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("cache_size", [0, 1 << 20])
def test_view_reads_states_by_node_and_the_greatest_node(path: Path, cache_size: int) -> None:
    """The internal one-snapshot reads StepLogSaver uses: same answers as load/history,
    from a warm or a cold cache, with the same errors."""
    with steplog.open(path, cache_size=cache_size) as store:
        for i in range(20):
            store.append("r", {"i": i, "pad": "x" * i}, node=f"n{i % 3}")
        store.append("empty-node-run", 1)
        for i in range(70):  # delta chains: the view decodes through them
            store.append("big", {"log": [f"line {j} " * 20 for j in range(i + 1)]}, node="b")
        assert store._view(lambda view: view.with_node("big", "b")) == [
            cp.state for cp in store.history("big")
        ]
        assert store._view(lambda view: view.last_node("big")) == (
            "b",
            [cp.state for cp in store.history("big")],
        )

        def read(view):  # type: ignore[no-untyped-def]
            return (
                view.last_node("r"),
                view.last_node("r", below="n2"),
                view.last_node("r", below="n0"),
                view.with_node("r", "n2"),
                view.last_node("nope"),
                view.with_node("nope", "n1"),
                view.last_node("empty-node-run"),
                view.with_node("empty-node-run", "n1"),
                (view.any_run("emp"), view.any_run("r"), view.any_run("s"), view.any_run("rr")),
            )

        last, below2, below0, n2, none1, none2, none3, none4, runs = store._view(read)
        assert last == ("n2", [cp.state for cp in store.history("r", node="n2")])
        assert below2 == ("n1", [cp.state for cp in store.history("r", node="n1")])
        assert below0 is None
        assert n2 == [cp.state for cp in store.history("r", node="n2")]
        assert (none1, none2, none3, none4) == (None, [], None, [])
        assert runs == (True, True, False, False)
        with pytest.raises(InvalidArgument):
            store._view(lambda view: view.last_node("bad\x00id"))
        with pytest.raises(InvalidArgument):
            store._view(lambda view: view.with_node("r", ""))
    _rewrite_record(path, 1, 17, lambda b: b[:-3] + bytes(3))  # i=17 was written by n2
    with steplog.open(path, cache_size=cache_size) as store:
        for read in (lambda view: view.with_node("r", "n2"), lambda view: view.last_node("r")):
            with pytest.raises(CorruptRecord):
                store._view(read)
        # small states are stored whole: the records around the damaged one still read
        assert store._view(lambda view: view.with_node("r", "n0"))[-1] == {"i": 18, "pad": "x" * 18}
        assert store._view(lambda view: view.last_node("r", below="n2"))[1][-1] == {
            "i": 19,
            "pad": "x" * 19,
        }


def test_the_inspection_commands_read_and_never_create_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from steplog import cli

    typo = tmp_path / "typo"
    assert cli.main(["runs", "--path", str(typo)]) == 1
    assert cli.main(["history", "r", "--path", str(typo)]) == 1
    assert not typo.exists()
    with steplog.open(tmp_path / "s") as store:
        store.append("r", 1, workflow_id="wf", node="n")
    assert cli.main(["runs", "--path", str(tmp_path / "s")]) == 0
    assert cli.main(["history", "r", "--path", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t")[:3] == ["r", "wf", "1"] and out[1].split("\t")[:2] == ["0", "n"]


def _resident_kib(data_file: Path) -> int:
    """KiB of ``data_file`` resident in this process's mappings of it (Linux smaps)."""
    st = os.stat(data_file)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                inside = int(fields[4]) == st.st_ino and os.makedev(major, minor) == st.st_dev
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
@pytest.mark.parametrize("by_node", [False, True])
def test_replaying_a_long_run_does_not_keep_its_pages_mapped(
    path: Path, monkeypatch: pytest.MonkeyPatch, by_node: bool
) -> None:
    # a replay touches every page of the run; the pages it has passed are let go
    # once more than the limit is resident (here 2 MiB, on a run of over 16 MiB)
    monkeypatch.setattr(_residency, "RESIDENT_LIMIT", 2 << 20)
    rng = random.Random(7)
    states = [{"i": i, "blob": rng.randbytes(3000)} for i in range(6000)]
    with steplog.open(path) as store:
        for lo in range(0, len(states), 1000):
            store.append_many("long", states[lo : lo + 1000], node="step")
    data_file = path / "data.mdb"
    assert data_file.stat().st_size > 16 << 20
    with steplog.open(path) as store:
        peak, seen = 0, []
        replay = store.history("long", node="step") if by_node else store.history("long")
        for cp in replay:
            seen.append(cp.state)
            if cp.index % 100 == 0:
                peak = max(peak, _resident_kib(data_file))
        assert seen == states
        assert peak < 8 << 10, f"{peak} KiB of the store stayed mapped"
        # what was let go reads back the same
        assert store.load("long", 10).state == states[10]
        if not by_node:  # so does a pass over the whole store
            assert store.verify().ok
            assert _resident_kib(data_file) < 8 << 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_long_lived_writer_does_not_keep_the_store_mapped(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each commit reads the pages it rewrites through the map; a writer that runs for
    # long lets go of them as a replay does (checked every few dozen commits)
    monkeypatch.setattr(_residency, "RESIDENT_LIMIT", 2 << 20)
    rng = random.Random(8)
    data_file = path / "data.mdb"
    with steplog.open(path) as store:
        peak = 0
        for lo in range(0, 24000, 50):  # records of 1 KiB: they sit in the leaves
            store.append_many(f"run-{lo % 7}", [{"blob": rng.randbytes(1000)} for _ in range(50)])
            peak = max(peak, _resident_kib(data_file))
        assert data_file.stat().st_size > 24 << 20
        assert peak < 8 << 10, f"{peak} KiB of the store stayed mapped"
        assert store.verify().ok
