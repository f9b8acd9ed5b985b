"""The commands of many runs: ``queue add`` and ``queue remove``, ``serve``, ``sweep`` and
``stop --serve``."""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterprune.cli.reading import store_for
from iterprune.errors import EXIT_FAILED, EXIT_OK, UserError
from iterprune.report import views
from iterprune.report.console import say
from iterprune.state import paths
from iterprune.state.backlog import Backlog
from iterprune.state.store import Store

if TYPE_CHECKING:
    from iterprune.serve import server


def _queue_runs(store: Store, schedules: list[tuple[Any, str]], priority: int, sweep: str | None):
    """Open every run (validated already) and queue it, all or nothing."""
    from iterprune.state.runs import open_run

    backlog, names = Backlog(store), []
    with store.transaction():
        for s, source in schedules:
            run = open_run(store, s, source, queued=True)
            backlog.add(run, priority, sweep)
            names.append(run)
    return names


def cmd_queue(args: argparse.Namespace) -> int:
    """``queue add`` and ``queue remove`` (the listing is ``reading.cmd_queue``)."""
    from iterprune import api

    if args.action == "add":
        if not args.items:
            raise UserError("queue add needs one or more schedule files")
        found = [api.load(p) for p in args.items]  # every one validated before any is queued
        store = store_for(args, create=True)
        for run in _queue_runs(store, found, args.priority, None):
            say(f"queued {run} (priority {args.priority})")
        say("serve them with: iterprune serve   (see them with: iterprune queue)")
        return EXIT_OK
    backlog = Backlog(store_for(args, write=True))  # no state: the usual message
    for run in args.items:
        backlog.remove(run)
        say(f"removed {run} from the queue (its run and history stay)")
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from iterprune.schedule import sweeps

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    grid = sweeps.expand(args.schedule, args.set, seeds)
    name = Path(args.schedule).stem if args.name is None else args.name
    if args.dry_run:
        for run, _ in grid:
            say(run)
        say(f"{len(grid)} runs (dry run: nothing queued)")
        return EXIT_OK
    store = store_for(args, create=True)
    source = str(Path(args.schedule).resolve())
    runs = _queue_runs(store, [(s, source) for _, s in grid], args.priority, name)
    say(f"queued {len(runs)} runs of sweep {name!r} (priority {args.priority})")
    say(f"serve them with: iterprune serve   rank them with: iterprune compare --sweep {name}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from iterprune.serve import launch

    devices = _devices(args.devices)
    state = paths.state_dir(args.state_dir)
    if args.detach:
        return _detach(args, state)
    if len(devices) > 1:
        from iterprune.serve import supervisor

        until = ["--until-empty"] if args.until_empty else []
        gave_up = supervisor.supervise(
            state, devices, ["--lease-timeout", str(args.lease_timeout), *until]
        )
        say("serve ended; see the runs with: iterprune queue")
        return EXIT_FAILED if gave_up else EXIT_OK
    slot = _worker(args.worker, devices[0])
    if devices[0].startswith("cuda:"):  # the only GPU its runs see (set before torch starts)
        os.environ["CUDA_VISIBLE_DEVICES"] = _gpu(devices[0])
    served = launch.serve_queue(state, args.lease_timeout, args.until_empty, devices[0], slot)
    say(f"serve ended after {served} run(s); see them with: iterprune queue")
    return EXIT_OK


def _devices(text: str) -> list[str]:
    """``--devices``: cpu, cuda or cuda:N, comma-separated; each GPU at most once."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        if d not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", d):
            raise UserError(f"--devices takes cpu, cuda or cuda:N (comma-separated), got {d!r}")
    if not devices:
        raise UserError("--devices needs a device: cpu, cuda or cuda:N")
    gpus = [d for d in devices if d != "cpu"]
    if len(devices) > 1 and "cuda" in gpus:
        raise UserError("with several devices, name each GPU: --devices cuda:0,cuda:1")
    if len(set(gpus)) < len(gpus):
        raise UserError(f"--devices names a GPU twice: {text} (one run at a time per GPU)")
    return devices


def _gpu(device: str) -> str:
    """CUDA_VISIBLE_DEVICES for ``cuda:N``: the Nth GPU that this process may see."""
    index = int(device.removeprefix("cuda:"))
    seen = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if not seen:
        return str(index)
    if index >= len(seen):
        raise UserError(f"{device}: CUDA_VISIBLE_DEVICES={','.join(seen)} shows {len(seen)} GPU(s)")
    return seen[index]


def _worker(text: str | None, device: str) -> server.Slot | None:
    """``--worker SLOT:PID`` (given by a serve of several devices to each of its workers)."""
    if text is None:
        return None
    from iterprune.serve.server import Slot  # (apscheduler and torch only for serve)

    if not re.fullmatch(r"\d+:\d+", text):
        raise UserError(f"--worker takes SLOT:PID (serve gives it to its workers), got {text!r}")
    index, parent = (int(x) for x in text.split(":"))
    if os.getppid() != parent:
        raise UserError(f"the serve that started this worker (pid {parent}) is gone")
    return Slot(index, device, parent)


def _detach(args: argparse.Namespace, state: Path) -> int:
    from iterprune.serve import launch

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
    from iterprune.serve import daemon

    if not args.serve:
        raise UserError("stop needs a RUN, or --serve to stop iterprune serve")
    backlog = Backlog(store)
    serve = views.serve(store)
    if serve is None:
        if not daemon.lock_held(paths.serve_lock(store.state_dir)):
            say("iterprune serve is not running")
            return EXIT_OK
        backlog.request_stop(time.time())  # the starting serve keeps it when it claims the row
        say("asked the iterprune serve that is starting to stop: it stops once it has started")
        return EXIT_OK
    row = backlog.request_stop(time.time()) or {}
    daemon.stop_owner(row)  # on this machine: at once; elsewhere at its next heartbeat
    runs = ", ".join(d["current"] for d in serve["devices"] if d["current"]) or "none"
    say(
        f"asked serve (pid {row['pid']} on {row['host']}) to stop: its current runs ({runs}) "
        "checkpoint and serve exits; start it again with: iterprune serve"
    )
    return EXIT_OK
