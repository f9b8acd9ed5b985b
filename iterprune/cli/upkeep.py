"""The commands that look after a state directory: ``check`` (is it whole?) and ``backup`` (a
consistent copy while runs are live). A thin layer over :func:`iterprune.api.check` and
:func:`iterprune.api.backup`."""

from __future__ import annotations

import argparse
from typing import Any

from iterprune import api
from iterprune.cli.reading import emit
from iterprune.errors import EXIT_DAMAGED, EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    doc = api.check(args.runs, args.state_dir)
    if args.json:
        emit(args, doc, _say)
    else:
        _say(doc)
    return EXIT_OK if doc["ok"] else EXIT_DAMAGED


def _say(doc: dict[str, Any]) -> None:
    integrity = doc["integrity"]
    print(f"{doc['state_dir']}: database integrity {'ok' if integrity == 'ok' else 'FAILED'}")
    for p in [] if integrity == "ok" else integrity:
        print(f"  - {p}")
    for run in doc["runs"]:
        verdict = "ok" if not run["problems"] else f"{len(run['problems'])} problem(s)"
        if run["status"] is None:
            verdict = "a checkpoint folder of no run"
        files = f"{run['checkpoints']} checkpoint(s), {_size(run.get('bytes') or 0)}"
        print(f"{run['run']:<24} {run['status'] or '-':<10} {files:<32} {verdict}")
        for p in run["problems"]:
            print(f"  - {p}")
        for f in run["unreferenced"]:
            print(f"  unreferenced file: {f}")
    if any(run["unreferenced"] for run in doc["runs"]):
        print(
            "unreferenced files are left by an interrupted write or a removed run; resuming a "
            "run removes its own, and they can be deleted"
        )
    if doc["ok"]:
        print("all well")
    else:
        print(
            f"{len(doc['problems'])} problem(s) found. A run whose newest checkpoint is "
            "damaged resumes from the newest one that verifies; restore the state from a backup "
            "(iterprune backup) if none does"
        )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_backup(args: argparse.Namespace) -> int:
    doc = api.backup(args.dest, args.runs, args.state_dir)
    print(
        f"backed up {len(doc['runs'])} run(s) ({doc['checkpoints']} checkpoint(s), "
        f"{_size(doc['bytes'])}, each verified by sha256) to {doc['dest']}"
    )
    print(f"continue a run there with: iterprune resume RUN --state-dir {doc['dest']}")
    return EXIT_OK
