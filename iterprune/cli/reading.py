"""The commands that only read: ``runs``, ``status``, ``history``, ``show``, ``logs`` and
``queue`` (the listing), and what every command shares (the state's store, ``--json`` output,
errors turned into messages and exit codes).

Nothing here imports torch, even inside a function (an import-linter contract in pyproject.toml
keeps it so): these are the commands people poll, and they answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from iterprune.errors import EXIT_OK, EXIT_SECOND_CTRL_C, IterpruneError, UserError
from iterprune.report import views
from iterprune.state import paths
from iterprune.state.backlog import Backlog
from iterprune.state.store import DB_NAME, Store


def store_for(args: argparse.Namespace, create: bool = False, write: bool = False) -> Store:
    """The state's store; a command that only reads (not ``write``) opens a directory it cannot
    write for reading only."""
    state = paths.state_dir(args.state_dir)
    if not create and not (state / DB_NAME).exists():
        raise UserError(
            f"no iterprune state in {state} (start a run first, or pass --state-dir / "
            f"set ${paths.ENV_STATE_DIR})"
        )
    return Store(state, read_only=not (create or write))


def has_state(args: argparse.Namespace) -> bool:
    return (paths.state_dir(args.state_dir) / DB_NAME).exists()


def emit(args: argparse.Namespace, doc: Any, render: Callable[[Any], Any]) -> int:
    """``--json``: the document on stdout and nothing else; otherwise ``render(doc)``."""
    from iterprune.report import console

    console.emit(doc, render, getattr(args, "json", False))
    return EXIT_OK


def guarded(command: Callable[[], int]) -> int:
    """Run a command; an iterprune error becomes its message on stderr and its exit code."""
    try:
        return command()
    except IterpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the run can be continued with: iterprune resume RUN", file=sys.stderr)
        return EXIT_SECOND_CTRL_C


# --- commands -----------------------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    from iterprune.report import console

    docs = views.runs(store_for(args)) if has_state(args) else []
    if not docs and not args.json:
        print(f"no runs in {paths.state_dir(args.state_dir)}")
        return EXIT_OK
    return emit(args, docs, console.runs_table)


def cmd_history(args: argparse.Namespace) -> int:
    from iterprune.report import console

    return emit(args, views.history(store_for(args), args.run), console.history_view)


def cmd_show(args: argparse.Namespace) -> int:
    from iterprune.report import console

    return emit(args, views.show(store_for(args), args.run, args.round), console.layers_table)


def cmd_status(args: argparse.Namespace) -> int:
    from iterprune.report import console

    if args.run is None and not has_state(args):
        rows = []
    else:
        rows = views.status(store_for(args), args.run)
    if args.json:
        return emit(args, rows[0] if args.run else rows, console.status_view)
    if not rows:
        print(f"no runs in {paths.state_dir(args.state_dir)}")
        return EXIT_OK
    if args.run is None:
        serve_line(store_for(args))
    return emit(args, rows, console.status_view)


def cmd_logs(args: argparse.Namespace) -> int:
    store = store_for(args)
    views.status(store, args.run)  # unknown run -> exit 2
    last = 0
    try:
        while True:
            for e in store.events(args.run, after_id=last):
                when = e["at"][:19].replace("T", " ")
                print(f"{when} {e['level']:<7} {e['message']}", flush=True)
                last = e["id"]
            served = views.status(store, args.run)[0]["status"] in ("running", "paused")
            if not args.follow or not served:
                return EXIT_OK
            time.sleep(1.0)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_queue(args: argparse.Namespace) -> int:
    """``iterprune queue`` (list); ``queue add`` and ``queue remove`` are in ``queue.py``."""
    from iterprune.report import console

    if not has_state(args):
        return emit(args, {"serve": None, "runs": []}, console.queue_table)
    return emit(args, views.queue(store_for(args)), console.queue_table)


def serve_line(store: Store) -> None:
    """``iterprune status``: the serve process and its queue, when there is one."""
    from iterprune.report import console

    backlog = Backlog(store)
    entries = backlog.entries()
    if not entries:
        return
    waiting = sum(1 for e in entries if e["position"])
    console.say(
        f"{console.serve_text(views.serve(store))}; queue: {waiting} of {len(entries)} run(s) waiting (iterprune queue)"
    )
