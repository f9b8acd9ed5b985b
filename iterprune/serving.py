"""The commands of many runs: ``queue`` (add, list, remove), ``serve`` and ``sweep``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from iterprune import paths
from iterprune.backlog import Backlog
from iterprune.console import say
from iterprune.errors import EXIT_OK, UserError
from iterprune.store import DB_NAME, Store


def _backlog(args: argparse.Namespace) -> Backlog:
    return Backlog(Store(paths.state_dir(args.state_dir)))


def queue_doc(backlog: Backlog) -> dict[str, Any]:
    """``iterprune queue --json``: the serve process and every queued run in order."""
    serve = backlog.serve() or {}
    keys = ("position", "run", "status", "priority", "sweep", "held", "round", "added_at")
    return {
        "serve": {k: serve.get(k) for k in ("pid", "host", "started_at", "current")}
        if serve.get("pid")
        else None,
        "runs": [{k: e[k] for k in keys} for e in backlog.entries()],
    }


def _queue_runs(store: Store, schedules: list[tuple[Any, str]], priority: int, sweep: str | None):
    """Open every run (validated already) and queue it, all or nothing."""
    from iterprune.runs import open_run

    backlog, names = Backlog(store), []
    with store.transaction():
        for s, source in schedules:
            run = open_run(store, s, source, queued=True)
            backlog.add(run, priority, sweep)
            names.append(run)
    return names


def cmd_queue(args: argparse.Namespace) -> int:
    from iterprune import console, schedule

    if args.action == "add":
        if not args.items:
            raise UserError("queue add needs one or more schedule files")
        found = [(schedule.load(p), str(Path(p).resolve())) for p in args.items]  # all first
        store = Store(paths.state_dir(args.state_dir))
        for run in _queue_runs(store, found, args.priority, None):
            say(f"queued {run} (priority {args.priority})")
        say("serve them with: iterprune serve   (see them with: iterprune queue)")
        return EXIT_OK
    if not (paths.state_dir(args.state_dir) / DB_NAME).exists():
        if args.action == "remove":
            raise UserError(f"no iterprune state in {paths.state_dir(args.state_dir)}")
        doc = {"serve": None, "runs": []}
        return _show(args, doc, console)
    backlog = _backlog(args)
    if args.action == "remove":
        for run in args.items:
            backlog.remove(run)
            say(f"removed {run} from the queue (its run and history stay)")
        return EXIT_OK
    return _show(args, queue_doc(backlog), console)


def _show(args: argparse.Namespace, doc: dict[str, Any], console: Any) -> int:
    console.emit(doc, console.queue_table, args.json)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from iterprune import sweeps

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    grid = sweeps.expand(args.schedule, args.set, seeds)
    name = Path(args.schedule).stem if args.name is None else args.name
    if args.dry_run:
        for run, _ in grid:
            say(run)
        say(f"{len(grid)} runs (dry run: nothing queued)")
        return EXIT_OK
    store = Store(paths.state_dir(args.state_dir))
    source = str(Path(args.schedule).resolve())
    runs = _queue_runs(store, [(s, source) for _, s in grid], args.priority, name)
    say(f"queued {len(runs)} runs of sweep {name!r} (priority {args.priority})")
    say(f"serve them with: iterprune serve   rank them with: iterprune compare --sweep {name}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from iterprune import launch

    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if len(devices) != 1:
        raise UserError(
            "serving several devices at once is not implemented yet: start one serve per state "
            "directory per device, or serve one device (--devices cpu, cuda:0)"
        )
    device = devices[0]
    if device.startswith("cuda:"):  # the only GPU this serve's runs see (before torch starts)
        os.environ["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    elif device != "cpu" and device != "cuda":
        raise UserError(f"--devices takes cpu, cuda or cuda:N, got {device!r}")
    state = paths.state_dir(args.state_dir)
    if args.detach:
        return _detach(args, state)
    served = launch.serve_queue(state, args.lease_timeout, args.until_empty)
    say(f"serve ended after {served} run(s); see them with: iterprune queue")
    return EXIT_OK


def _detach(args: argparse.Namespace, state: Path) -> int:
    from iterprune import launch

    log = paths.serve_log(state)
    command = ["serve", "--state-dir", str(state.resolve()), "--devices", args.devices]
    command += ["--lease-timeout", str(args.lease_timeout)]
    pid = launch.spawn(command + (["--until-empty"] if args.until_empty else []), log)
    say(
        f"serve started in the background: pid {pid}",
        f"log: {log} (each run's own: iterprune logs RUN)",
        "see it with: iterprune status    stop it with: iterprune stop --serve",
    )
    return EXIT_OK


def stop_serve(store: Store, args: argparse.Namespace) -> int:
    from iterprune import daemon

    if not args.serve:
        raise UserError("stop needs a RUN, or --serve to stop iterprune serve")
    row = Backlog(store).request_stop()
    if not row or not row.get("pid"):
        say("iterprune serve is not running")
        return EXIT_OK
    daemon.stop_owner(row)  # on this machine: at once; elsewhere at its next heartbeat
    say(
        f"asked serve (pid {row['pid']} on {row['host']}) to stop: its current run "
        f"({row.get('current') or 'none'}) checkpoints and serve exits; start it again with: "
        "iterprune serve"
    )
    return EXIT_OK


def serve_line(store: Store) -> None:
    """``iterprune status``: the serve process and its queue, when there is one."""
    backlog = Backlog(store)
    entries = backlog.entries()
    if not entries:
        return
    waiting = sum(1 for e in entries if e["position"])
    serve = backlog.serve() or {}
    who = (
        f"serve: pid {serve['pid']} on {serve['host']}, serving {serve['current'] or 'nothing'}"
        if serve.get("pid")
        else "serve: not running (iterprune serve)"
    )
    say(f"{who}; queue: {waiting} of {len(entries)} run(s) waiting (iterprune queue)")
