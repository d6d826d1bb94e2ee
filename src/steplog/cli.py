"""The ``steplog`` command line: the demo and a few read-only inspection commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import steplog
from steplog import _demo

DEFAULT_DEMO_PATH = Path("steplog-demo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="steplog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a crash/resume/fork demo and print its log")
    demo.add_argument("--path", type=Path, default=DEFAULT_DEMO_PATH, help="store directory")

    runs = sub.add_parser("runs", help="list runs, newest-updated first")
    runs.add_argument("--path", type=Path, required=True)
    runs.add_argument("--workflow")
    runs.add_argument("--limit", type=int, default=20)

    history = sub.add_parser("history", help="print a run's checkpoints")
    history.add_argument("run_id")
    history.add_argument("--path", type=Path, required=True)

    worker = sub.add_parser("_worker")  # the demo's crashing worker process
    worker.add_argument("--path", type=Path, required=True)
    worker.add_argument("--crash-after", type=int)

    args = parser.parse_args(argv)
    if args.command in ("runs", "history") and not (args.path / "data.mdb").is_file():
        print(f"steplog: no store at {str(args.path)!r}", file=sys.stderr)
        return 1  # inspecting must not create a store at a mistyped path
    try:
        if args.command == "demo":
            _demo.run_demo(args.path)
        elif args.command == "_worker":
            _demo.worker(args.path, args.crash_after)
        elif args.command == "runs":
            with steplog.open(args.path) as store:
                for info in store.runs(args.workflow, limit=args.limit):
                    status = info.status.value if info.status else "-"
                    wf = info.workflow_id or "-"
                    row = (info.run_id, wf, info.length, status, info.updated_at)
                    print("\t".join(map(str, row)))
        elif args.command == "history":
            with steplog.open(args.path) as store:
                for cp in store.history(args.run_id):
                    fields = (cp.index, cp.node or "-", cp.status.value, cp.created_at.isoformat())
                    print("\t".join(map(str, fields)))
    except steplog.StepLogError as exc:
        print(f"steplog: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
