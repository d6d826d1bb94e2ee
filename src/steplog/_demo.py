"""``steplog demo``: a small agent run that crashes, resumes, forks and shows its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import steplog
from steplog import Status

RUN = "support-ticket-42"
FORK = "support-ticket-42-escalated"
WORKFLOW = "support-agent"
#: The agent's plan: one checkpoint per node.
STEPS = ["triage", "lookup_order", "draft_reply", "review", "send"]
#: The worker process kills itself (SIGKILL, no cleanup) after this many steps.
CRASH_AFTER = 3


def _step(state: dict[str, Any], node: str) -> dict[str, Any]:
    """One node of the toy agent: append a message, update a few fields."""
    messages = [*state.get("messages", []), {"role": "agent", "node": node, "text": f"{node} done"}]
    return {**state, "messages": messages, "last_node": node, "steps": state.get("steps", 0) + 1}


def worker(path: Path, crash_after: int | None) -> None:
    """Run the agent from its latest checkpoint; optionally die abruptly mid-run."""
    with steplog.open(path) as store:
        latest = store.load(RUN)
        state: dict[str, Any] = latest.state if latest else {"ticket": 42, "tier": "standard"}
        done = latest.index + 1 if latest else 0
        for n, node in enumerate(STEPS[done:], start=done):
            state = _step(state, node)
            last = n == len(STEPS) - 1
            store.append(
                RUN,
                state,
                workflow_id=WORKFLOW,
                node=node,
                status=Status.COMPLETED if last else Status.RUNNING,
                metadata={"pid": os.getpid(), "attempt": 1 if crash_after else 2},
            )
            if crash_after is not None and n + 1 == crash_after:
                os.kill(os.getpid(), signal.SIGKILL)


def _disk_bytes(path: Path) -> tuple[int, int]:
    data = path / "data.mdb"
    st = data.stat()
    return st.st_size, st.st_blocks * 512


def run_demo(path: Path, out: TextIO = sys.stdout) -> None:
    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    say(f"steplog demo - store at {path}")
    with steplog.open(path) as store:
        for run_id in (FORK, RUN):
            if store.run(run_id) is not None:
                store.purge(run_id)

    say(f"\n1. A worker process runs {RUN!r} and is killed (SIGKILL) after {CRASH_AFTER} steps")
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "steplog",
            "_worker",
            "--path",
            str(path),
            "--crash-after",
            str(CRASH_AFTER),
        ],
        check=False,
    )
    say(f"   worker exit code {proc.returncode} (killed by signal {-proc.returncode})")

    with steplog.open(path) as store:
        latest = store.load(RUN)
        assert latest is not None
        say(f"   after the crash the latest checkpoint is #{latest.index} by node {latest.node!r}")

    say("\n2. A new worker resumes from that checkpoint and finishes the run")
    worker(path, crash_after=None)

    with steplog.open(path) as store:
        info = store.run(RUN)
        assert info is not None
        status = info.status.value if info.status else "-"
        say(f"   run {RUN!r}: {info.length} checkpoints, status {status}")

        say("\n3. Fork from checkpoint #1 with an override (escalate the ticket)")
        fork = store.fork(RUN, 1, FORK, overrides={"tier": "priority"})
        state = fork.state
        for node in ("escalate", "send"):
            state = _step(state, node)
            store.append(
                FORK,
                state,
                node=node,
                status=Status.COMPLETED if node == "send" else Status.RUNNING,
            )

        say(f"\n4. History of {RUN!r}")
        say(f"   {'#':>2}  {'node':<13} {'status':<10} {'msgs':>4}  created (UTC)")
        for cp in store.history(RUN):
            created = cp.created_at.strftime("%H:%M:%S.%f")[:-3]
            say(
                f"   {cp.index:>2}  {cp.node or '-':<13} {cp.status.value:<10} "
                f"{len(cp.state['messages']):>4}  {created}  pid={cp.metadata.get('pid')}"
            )

        say(f"\n5. History of the fork {FORK!r}")
        for cp in store.history(FORK):
            tier = cp.state["tier"]
            say(f"   {cp.index:>2}  {cp.node or '-':<13} {cp.status.value:<10} tier={tier}")

        say(f"\n6. Lineage of {FORK!r}")
        for depth, run in enumerate(store.lineage(FORK)):
            origin = (
                f" (forked from {run.parent_run_id!r} at #{run.parent_index})"
                if run.parent_run_id
                else " (root)"
            )
            say(f"   {'  ' * depth}{run.run_id}{origin}")

        latest_wf = store.latest(WORKFLOW)
        assert latest_wf is not None
        where = f"{latest_wf.run_id} #{latest_wf.index}"
        say(f"\n7. Latest checkpoint of workflow {WORKFLOW!r}: {where}")
        runs = store.runs(WORKFLOW)
        say(f"   runs newest first: {', '.join(r.run_id for r in runs)}")

    size, allocated = _disk_bytes(path)
    say(f"\n8. On disk: data.mdb is {size:,} bytes ({allocated:,} allocated)")
