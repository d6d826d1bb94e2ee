"""Kill harness: SIGKILL writer processes at random moments, again and again, and prove
that nothing acknowledged is ever lost.

    python tools/crashtest.py --kills 1000            # 1000 kills in each durability mode
    python tools/crashtest.py --kills 200 --mode fast --seed 7

Each cycle starts a writer process (several threads, group commit, several runs that
continue across cycles, forks, purges and delete_latest mixed in) that logs every
acknowledged operation to an append-only file, and logs an *intent* line before each
operation. After a random delay the writer is SIGKILLed. Then the store is reopened
and checked:

* ``verify()`` finds nothing: every record's checksum, dense indices, every index
  agrees with the log;
* every acknowledged append is present at its index, byte-identical;
* every acknowledged purge/delete happened; anything beyond the acknowledged state is
  exactly an operation whose intent was logged but not yet its acknowledgement.

A process crash (SIGKILL) must lose nothing acknowledged in either durability mode.
The store directory is started afresh every 25 kills to bound its size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

import steplog

THREADS = 4
RUNS_PER_THREAD = 3
WORDS = "plan search fetch parse draft review send retry tool call result user agent".split()


def digest(state: Any) -> str:
    return hashlib.sha1(msgspec.msgpack.encode(state)).hexdigest()[:16]


# ---------------------------------------------------------------- writer process


def writer(path: Path, log_path: Path, seed: int, durability: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(*fields: Any) -> None:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())

    store = steplog.open(path, durability=durability)

    def thread(t: int) -> None:
        rng = random.Random(seed * 100 + t)
        states: dict[str, Any] = {}
        forks: list[str] = []
        for k in range(RUNS_PER_THREAD):
            run = f"t{t}-r{k}"
            latest = store.load(run)
            states[run] = latest.state if latest else {"run": run, "n": 0, "items": []}
        n = 0
        while True:
            n += 1
            run = f"t{t}-r{rng.randrange(RUNS_PER_THREAD)}"
            roll = rng.random()
            if roll < 0.85:
                prev = states[run]
                items = [*prev["items"], " ".join(rng.choice(WORDS) for _ in range(12))][-40:]
                state = {"run": run, "n": prev["n"] + 1, "items": items, "seed": seed}
                h = digest(state)
                log("I", "A", run, h)
                workflow = f"w{t}-{int(run.rsplit('r', 1)[1]) % 2}"  # runs share workflows
                cp = store.append(
                    run, state, workflow_id=workflow, node=rng.choice(["a", "b", None])
                )
                log("A", run, cp.index, h)
                states[run] = state
            elif roll < 0.92:
                info = store.run(run)
                if info is None or info.length == 0:
                    continue
                index = rng.randrange(info.length)
                dst = f"fork-{seed}-{t}-{n}"
                log("I", "F", dst)
                cp = store.fork(run, index, dst, overrides={"forked": n})
                log("F", dst, digest(cp.state))
                forks.append(dst)
            elif roll < 0.96 and forks:
                dst = forks.pop(rng.randrange(len(forks)))
                log("I", "P", dst)
                store.purge(dst)
                log("P", dst)
            else:
                info = store.run(run)
                if info is None or info.length < 2 or store.children(run, -1):
                    continue
                log("I", "D", run, info.length - 1)
                gone = store.delete_latest(run)
                assert gone is not None
                log("D", run, gone.index)
                latest = store.load(run)
                assert latest is not None
                states[run] = latest.state

    for t in range(THREADS):
        threading.Thread(target=thread, args=(t,), daemon=True).start()
    log("READY")
    while True:
        time.sleep(1)


# ---------------------------------------------------------------- checker


@dataclass
class Model:
    runs: dict[str, list[str]] = field(default_factory=dict)  # run -> digests by index
    gone: set[str] = field(default_factory=set)
    pending: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run -> intent
    acked: int = 0


def replay(log_path: Path, model: Model) -> None:
    """Apply the acknowledged operations of one cycle's log to the model."""
    model.pending.clear()
    for line in log_path.read_text().splitlines():
        f = line.split()
        if not f or f[0] == "READY":
            continue
        if f[0] == "I":
            key = f[2]
            model.pending[key] = tuple(f[1:])
            continue
        kind = f[0]
        if kind == "A":
            run, index, h = f[1], int(f[2]), f[3]
            runs = model.runs.setdefault(run, [])
            if index != len(runs):
                raise AssertionError(f"ack of {run}#{index} but the model has {len(runs)}")
            runs.append(h)
        elif kind == "F":
            model.runs[f[1]] = [f[2]]
        elif kind == "P":
            model.runs.pop(f[1], None)
            model.gone.add(f[1])
        elif kind == "D":
            model.runs[f[1]].pop()
        model.acked += 1
        model.pending.pop(f[1], None)


def check(path: Path, model: Model) -> int:
    """Reopen and check the store against the model; return records verified."""
    with steplog.open(path) as store:
        report = store.verify()
        if not report.ok:
            raise AssertionError(f"verify() found problems: {report.problems[:5]}")
        for run, digests in list(model.runs.items()):
            pending = model.pending.get(run)
            info = store.run(run)
            if info is None:
                if pending and pending[0] in ("P",):
                    del model.runs[run]
                    model.gone.add(run)
                    continue
                raise AssertionError(f"run {run} with {len(digests)} acked checkpoints is gone")
            stored = [digest(cp.state) for cp in store.history(run)]
            if pending and pending[0] == "D" and len(stored) == len(digests) - 1:
                digests.pop()  # the delete committed before its acknowledgement
            elif pending and pending[0] == "A" and len(stored) == len(digests) + 1:
                if stored[-1] != pending[2]:
                    raise AssertionError(f"{run}: unacknowledged tail is not the intended state")
                digests.append(stored[-1])  # committed before its acknowledgement
            if stored != digests:
                raise AssertionError(
                    f"{run}: store has {len(stored)} checkpoints, model {len(digests)}; "
                    f"first difference at {_first_diff(stored, digests)}"
                )
        for run, intent in model.pending.items():
            if run in model.runs or store.run(run) is None:
                continue
            # a run created by an operation that committed before its acknowledgement
            stored = [digest(cp.state) for cp in store.history(run)]
            if intent[0] == "A" and stored != [intent[2]]:
                raise AssertionError(f"{run}: unacknowledged first append is not the intended one")
            if intent[0] in ("A", "F"):
                model.runs[run] = stored
            else:
                raise AssertionError(f"{run} exists but no acknowledged operation made it")
        for run in model.gone:
            if store.run(run) is not None:
                raise AssertionError(f"purged run {run} is back")
        return report.records


def _first_diff(a: list[str], b: list[str]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# ---------------------------------------------------------------- driver


@dataclass
class Totals:
    kills: int = 0
    acked: int = 0
    records_verified: int = 0
    last_store: Path | None = None
    last_model: Model | None = None


def campaign(
    root: Path,
    kills: int,
    durability: str,
    seed: int,
    cycles_per_store: int = 25,
    max_delay: float = 0.4,
    progress: bool = False,
) -> Totals:
    rng = random.Random(seed)
    totals = Totals()
    model, path = Model(), root
    for cycle in range(kills):
        if cycle % cycles_per_store == 0:
            path = root / f"{durability}-{cycle}"
            model = Model()
        log_path = path.with_suffix(".log")
        log_path.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--writer",
                str(path),
                str(log_path),
                str(seed * 100_000 + cycle),
                durability,
            ],
        )
        deadline = time.monotonic() + 30
        while not (log_path.exists() and b"READY" in log_path.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"writer did not start (exit {proc.returncode})")
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, max_delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = model.acked
        replay(log_path, model)
        totals.records_verified += check(path, model)
        totals.kills += 1
        totals.acked += model.acked - before
        totals.last_store, totals.last_model = path, model
        if progress and totals.kills % 50 == 0:
            print(
                f"  {durability}: {totals.kills} kills, {totals.acked:,} acknowledged "
                f"operations, {totals.records_verified:,} records verified",
                flush=True,
            )
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writer", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--kills", type=int, default=200, help="kills per durability mode")
    ap.add_argument("--mode", choices=["full", "fast", "both"], default="both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path)
    ns = ap.parse_args()
    if ns.writer:
        path, log_path, seed, durability = ns.writer
        writer(Path(path), Path(log_path), int(seed), durability)
        return
    root = ns.dir or Path(tempfile.mkdtemp(prefix="steplog-crash-"))
    modes = ["full", "fast"] if ns.mode == "both" else [ns.mode]
    start = time.monotonic()
    for mode in modes:
        t = campaign(root, ns.kills, mode, ns.seed, progress=True)
        print(
            f"{mode}: {t.kills} kills survived, {t.acked:,} acknowledged operations all "
            f"present, {t.records_verified:,} records verified, nothing lost"
        )
    print(f"total {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
