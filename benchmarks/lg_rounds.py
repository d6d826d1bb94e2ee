"""The [6] put figures round after round, with the host's CPU speed beside each round.

StepLogSaver's put rate is CPU-bound: 20 threads share one GIL on this machine's cores.
SqliteSaver's rate waits on flushes. The floor (LangGraph's serialisation plus raw LMDB
puts) is CPU-bound too. Their ratios therefore move with the host's CPU speed, which on
a shared machine changes from one second to the next.

Each round runs the three kinds back to back, each in a fresh process (bench.py's
langgraph workload, puts only: 20 threads x 200 steps of the growing chat). While each
kind runs, this process probes the host every PROBE_EVERY seconds: the CPU time of a
fixed pure-Python loop (lower is faster; ~2% of one core). The script prints every
round with the median probe during each kind, then the spread of each ratio, and that
of StepLogSaver's ratio in the rounds when the host was slow during its run and in the
others.

    python benchmarks/lg_rounds.py --rounds 20
    python benchmarks/lg_rounds.py --probe 30     # the probe alone, once a second
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the workloads and their subprocess runner

KINDS = ("steplog", "sqlite", "raw")
#: StepLogSaver's target against SqliteSaver (issue 6)
TARGET = 3.0
#: Seconds between two probes while a kind runs.
PROBE_EVERY = 0.1
#: A round's host counts as slow when its probe during steplog's run reads over this
#: many times the fastest probe of the whole run.
SLOW = 1.3


def probe() -> float:
    """CPU milliseconds of a fixed pure-Python loop."""
    start = time.thread_time()
    total = 0
    for i in range(50_000):
        total += i * i % 7
    return (time.thread_time() - start) * 1e3


def probing(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()``'s result and the median probe taken while it ran."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(PROBE_EVERY):
            samples.append(probe())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return result, statistics.median(samples) if samples else float("nan")


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}, {min(values):.2f}-{max(values):.2f}"


def at_target(ratios: list[float]) -> str:
    return f"{sum(r >= TARGET for r in ratios)} of {len(ratios)} at {TARGET}x or more"


def run_rounds(count: int, root: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run ``count`` rounds, printing each; return the ratios and the probes by kind."""
    args = {"threads": bench.LG_THREADS, "steps": bench.LG_STEPS, "puts_only": True}
    ratios: dict[str, list[float]] = {"steplog/sqlite": [], "floor/sqlite": [], "steplog/floor": []}
    probes: dict[str, list[float]] = {kind: [] for kind in KINDS}
    print("round  steplog  sqlite   floor  (probe ms during each)  steplog/sqlite  floor/sqlite")
    for n in range(1, count + 1):
        rate, during = {}, {}
        for kind in KINDS:
            result, during[kind] = probing(
                lambda kind=kind: bench.run_one("langgraph", {**args, "kind": kind}, root)
            )
            rate[kind] = result["rate"]
            probes[kind].append(during[kind])
        ratios["steplog/sqlite"].append(rate["steplog"] / rate["sqlite"])
        ratios["floor/sqlite"].append(rate["raw"] / rate["sqlite"])
        ratios["steplog/floor"].append(rate["steplog"] / rate["raw"])
        print(
            f"{n:>5}  {rate['steplog']:>7,.0f}  {rate['sqlite']:>6,.0f}  {rate['raw']:>6,.0f}  "
            f"({' / '.join(f'{during[k]:.2f}' for k in KINDS)})"
            f"{ratios['steplog/sqlite'][-1]:>16.2f}x{ratios['floor/sqlite'][-1]:>13.2f}x",
            flush=True,
        )
    return ratios, probes


def summary(ratios: dict[str, list[float]], probes: dict[str, list[float]]) -> None:
    print(f"\n{len(probes['steplog'])} rounds")
    for name, values in ratios.items():
        print(f"  {name:<15} {spread(values)}")
    print(f"  steplog/sqlite: {at_target(ratios['steplog/sqlite'])}")
    for kind in KINDS:
        print(f"  probe during {kind:<8} {spread(probes[kind])} ms")
    fastest = min(min(values) for values in probes.values())
    for label, slow in (("at its usual speed", False), ("slow", True)):
        chosen = [
            ratio
            for ratio, p in zip(ratios["steplog/sqlite"], probes["steplog"], strict=True)
            if (p > SLOW * fastest) == slow
        ]
        if chosen:
            print(
                f"  steplog/sqlite with the host {label} during steplog's run: "
                f"{spread(chosen)}; {at_target(chosen)}"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--probe", type=int, help="only print this many probes, one a second")
    ap.add_argument("--dir", type=Path, help="where the stores go (default: a temp dir)")
    ns = ap.parse_args()
    if ns.probe:
        for _ in range(ns.probe):
            print(f"{min(probe() for _ in range(5)):.2f}", end=" ", flush=True)
            time.sleep(1)
        print("(probe, best of five, ms)")
        return
    if ns.dir is not None:
        ns.dir.mkdir(parents=True, exist_ok=True)
        summary(*run_rounds(ns.rounds, ns.dir))
        return
    with tempfile.TemporaryDirectory(prefix="steplog-rounds-") as root:
        summary(*run_rounds(ns.rounds, Path(root)))


if __name__ == "__main__":
    main()
