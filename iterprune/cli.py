"""The ``iterprune`` command line: the only place errors become messages and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterprune import __version__, paths, views
from iterprune.errors import IterpruneError, UserError

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_STOPPED, EXIT_BUSY = 0, 1, 2, 3, 4


def _console(stderr: bool = False):
    from iterprune.console import make_console

    return make_console(stderr=stderr)


def _store(args: argparse.Namespace, create: bool = False):
    from iterprune.store import DB_NAME, Store

    state = paths.state_dir(args.state_dir)
    if not create and not (state / DB_NAME).exists():
        raise UserError(
            f"no iterprune state in {state} (start a run first, or pass --state-dir / "
            f"set ${paths.ENV_STATE_DIR})"
        )
    return Store(state)


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# --- commands -----------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from iterprune import schedule

    s = schedule.load(args.schedule)
    p = s.prune
    source = s.model.builtin or s.model.factory
    print(
        f"{args.schedule}: OK — run '{s.name}', model {source}, {p.method} pruning "
        f"{p.step:.0%} per round to {p.target_sparsity:.0%}, budget {s.validate.max_drop} points"
    )
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace) -> int:
    from iterprune import analysis, schedule, sources

    s = schedule.load(args.schedule)
    model = sources.build_model(s.model, s.seed, s.base_dir)
    doc = {
        "schedule": args.schedule,
        "model": s.model.builtin or s.model.torchvision or s.model.factory,
        "weights": s.model.weights,
        **analysis.weight_report(model, s.prune.exclude),
    }
    if args.json:
        _print_json(doc)
        return EXIT_OK
    from iterprune import console

    _console().print(console.analysis_view(doc))
    return EXIT_OK


def _serve(store, run_id: str, lease_timeout: float, leader=None) -> int:
    from iterprune import console, daemon
    from iterprune.runner import Runner

    con = _console()
    with console.reporter_for(con) as reporter:
        runner = Runner(store, run_id, reporter, leader=leader)
        status = daemon.serve(runner, lease_timeout)
    if status == "finished":
        con.print(f"Done. See the rounds with: iterprune history {run_id}")
        return EXIT_OK
    return EXIT_STOPPED


Opening = Callable[[], "tuple[Any, str | None]"]  # (store, run id); no run id: nothing to serve


def _run(args: argparse.Namespace, opening: Opening) -> int:
    """Serve the run that ``opening`` names: here, in the background, or under torchrun."""
    from iterprune import distributed

    if distributed.launched():
        if getattr(args, "detach", False):
            raise UserError(
                "--detach cannot be used under torchrun; run torchrun itself in the "
                "background (nohup, tmux, a systemd unit)"
            )
        return _run_distributed(args, opening)
    store, run_id = opening()
    if run_id is None:
        return EXIT_OK
    if getattr(args, "detach", False):
        return _detach(store, run_id, args.lease_timeout)
    return _serve(store, run_id, args.lease_timeout)


def _run_distributed(args: argparse.Namespace, opening: Opening) -> int:
    """Under torchrun: rank 0 serves the run and leads; every other rank follows its orders.

    A stop (``iterprune stop``, SIGTERM, Ctrl-C) ends every rank with exit code 0, so that an
    elastic torchrun does not restart a run that was asked to stop; failures exit non-zero on
    rank 0, and torchrun ends (or restarts) the other ranks.
    """
    from iterprune import distributed

    group = distributed.Group()
    try:
        if group.rank != 0:
            return distributed.follow(group)
        leader = distributed.Leader(group)
        code = EXIT_FAILED
        try:
            store, run_id = opening()
            if run_id is None:
                code = EXIT_OK
                return code
            leader.open(run_id, store.run(run_id))
            code = _serve(store, run_id, args.lease_timeout, leader)
            if code == EXIT_STOPPED:
                print(
                    f"stopped on all {group.world} ranks (exit code 0 under torchrun); continue "
                    f"with: torchrun ... -m iterprune resume {run_id}"
                )
                code = EXIT_OK
            return code
        except IterpruneError as exc:
            code = exc.exit_code
            raise
        finally:
            leader.close(code)
    finally:
        group.close()
        global _LEFT_GROUP
        _LEFT_GROUP = True


def cmd_start(args: argparse.Namespace) -> int:
    from iterprune import schedule
    from iterprune.runs import open_run

    def opening():
        s = schedule.load(args.schedule)  # every schedule problem surfaces before any write
        store = _store(args, create=True)
        run_id = open_run(store, s, os.path.abspath(args.schedule), fresh=args.fresh)
        row = store.run(run_id)
        if row and row["status"] == "finished":
            print(f"run '{run_id}' already finished: {row['reason']}")
            print(f"See it with: iterprune history {run_id}   (start it again with --fresh)")
            return store, None
        return store, run_id

    return _run(args, opening)


def _detach(store, run_id: str, lease_timeout: float) -> int:
    """Serve the run from a background process (new session, no terminal), logging to a file."""
    from iterprune import daemon

    with daemon.run_lock(store.state_dir, run_id, store):
        pass  # nobody serves it now: errors until here reach the caller
    log = paths.log_file(store.state_dir, run_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iterprune",
                "resume",
                run_id,
                "--state-dir",
                str(store.state_dir.resolve()),
                "--lease-timeout",
                str(lease_timeout),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    print(f"run {run_id} started in the background: pid {proc.pid}")
    print(f"log: {log}")
    print(
        f"follow it: iterprune logs {run_id} -f    status: iterprune status {run_id}    "
        f"stop it: iterprune stop {run_id}"
    )
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    def opening():
        store = _store(args)
        row = views.status(store, args.run)[0]
        if row["status"] == "finished":
            print(f"run '{args.run}' already finished: {row['reason']}")
            return store, None
        return store, args.run

    return _run(args, opening)


def cmd_runs(args: argparse.Namespace) -> int:
    store = _store(args)
    docs = views.runs(store)
    if args.json:
        _print_json(docs)
        return EXIT_OK
    from iterprune import console

    _console().print(console.runs_table(docs) if docs else "no runs yet")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    doc = views.history(_store(args), args.run)
    if args.json:
        _print_json(doc)
        return EXIT_OK
    from iterprune import console

    _console().print(console.history_view(doc))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    doc = views.show(_store(args), args.run, args.round)
    if args.json:
        _print_json(doc)
        return EXIT_OK
    from iterprune import console

    _console().print(console.layers_table(doc))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    rows = views.status(_store(args), args.run)
    if args.json:
        if args.run:
            _print_json(rows[0])
        else:
            _print_json(rows)
        return EXIT_OK
    from iterprune import console

    con = _console()
    con.print(console.status_table(rows))
    for r in rows:
        if r["status"] == "interrupted":
            con.print(f"{r['run']} was interrupted; continue it with: iterprune resume {r['run']}")
        if r["next_window_at"] and r["status"] == "paused":
            con.print(f"{r['run']} waits for its time window: next opening {r['next_window_at']}")
        if r["error"]:
            con.print(f"{r['run']} last error: {r['error']}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    store = _store(args)
    row = views.status(store, args.run)[0]
    if row["status"] not in ("running", "paused"):
        print(f"run '{args.run}' is not being served (status: {row['status']})")
        return EXIT_OK
    store.request_stop(args.run)  # the owner's heartbeat sees it, on whatever host it runs
    owner = store.run(args.run) or {}
    if owner.get("host") == socket.gethostname() and owner.get("pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(owner["pid"], signal.SIGTERM)  # same machine: at once
    print(
        f"asked pid {owner.get('pid')} on {owner.get('host')} to stop run '{args.run}': it "
        "finishes the current batch, writes a mid-round checkpoint and exits"
    )
    print(f"continue it later with: iterprune resume {args.run}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from iterprune import export

    store = _store(args)
    views.status(store, args.run)  # unknown run -> exit 2
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(x) for x in args.input_shape.split(","))
        except ValueError:
            raise UserError(
                f"--input-shape must look like 3,224,224, got {args.input_shape!r}"
            ) from None
    doc = export.export(store, args.run, args.round, Path(args.out), args.format, shape)
    ratio = doc["bytes"] / doc["dense_state_dict_bytes"]
    print(
        f"wrote {doc['out']} ({doc['format']}): round {doc['round']}, sparsity "
        f"{doc['sparsity']:.2%}, accuracy {doc['val_accuracy']:.2f}%"
    )
    print(
        f"size {doc['bytes'] / 2**20:.2f} MiB; the dense state_dict is "
        f"{doc['dense_state_dict_bytes'] / 2**20:.2f} MiB ({ratio:.0%})"
    )
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    import json as _json

    from iterprune import plots

    store = _store(args)
    history = views.history(store, args.run)
    layers = views.show(store, args.run, args.round)
    max_drop = _json.loads(store.run(args.run)["schedule"])["validate"]["max_drop"]
    plots.plot(history, layers, max_drop, Path(args.out))
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    store = _store(args)
    docs = [views.summary(store, args.run), views.summary(store, args.other)]
    if args.json:
        _print_json(docs)
        return EXIT_OK
    from iterprune import console

    _console().print(console.compare_table(docs))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    store = _store(args)
    views.status(store, args.run)  # unknown run -> exit 2
    last = 0
    try:
        while True:
            for e in store.events(args.run, after_id=last):
                print(
                    f"{e['at'][:19].replace('T', ' ')} {e['level']:<7} {e['message']}", flush=True
                )
                last = e["id"]
            if not args.follow or views.status(store, args.run)[0]["status"] not in (
                "running",
                "paused",
            ):
                return EXIT_OK
            time.sleep(1.0)
    except KeyboardInterrupt:
        return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------

COMMANDS: list[tuple[str, str, str, Callable[[argparse.Namespace], int]]] = [
    (
        "start",
        "start (or continue) a run from a schedule",
        "iterprune start schedules/digits.yaml\n  iterprune start my.yaml --detach --state-dir /data/prune",
        cmd_start,
    ),
    ("resume", "continue a stopped or interrupted run", "iterprune resume digits-cnn", cmd_resume),
    (
        "validate",
        "check a schedule and report every problem at once",
        "iterprune validate schedules/digits.yaml",
        cmd_validate,
    ),
    (
        "analyze",
        "weight-distribution report of the schedule's model, before pruning",
        "iterprune analyze schedules/resnet50-imagefolder.yaml --json",
        cmd_analyze,
    ),
    (
        "runs",
        "list the runs in the state directory",
        "iterprune runs\n  iterprune runs --json",
        cmd_runs,
    ),
    (
        "history",
        "every round and attempt of a run",
        "iterprune history digits-cnn\n  iterprune history digits-cnn --json",
        cmd_history,
    ),
    (
        "show",
        "per-layer parameters, non-zero weights and sparsity of a round",
        "iterprune show digits-cnn\n  iterprune show digits-cnn --round 3 --json",
        cmd_show,
    ),
    (
        "status",
        "what a run is doing now (from the database alone)",
        "iterprune status\n  iterprune status digits-cnn --json",
        cmd_status,
    ),
    (
        "stop",
        "ask the process serving a run to stop after its current batch",
        "iterprune stop digits-cnn",
        cmd_stop,
    ),
    (
        "export",
        "write a round's weights for use without iterprune (pt, pt2, safetensors, sparse, onnx)",
        "iterprune export digits-cnn --round best --format sparse --out digits.sparse.pt",
        cmd_export,
    ),
    (
        "plot",
        "accuracy vs sparsity of every attempt, and per-layer sparsity, as a PNG",
        "iterprune plot digits-cnn --out digits.png",
        cmd_plot,
    ),
    (
        "compare",
        "two runs side by side",
        "iterprune compare digits-cnn digits-lottery",
        cmd_compare,
    ),
    (
        "logs",
        "the run's event log (-f follows it while the run is served)",
        "iterprune logs digits-cnn -f",
        cmd_logs,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iterprune",
        description="Iterative pruning scheduler: prune, fine-tune, validate, accept or roll back.",
        epilog="Example:\n  iterprune start schedules/digits.yaml\n  iterprune history digits-cnn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"iterprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text, example, fn in COMMANDS:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=f"Example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(fn=fn)
        if name in ("start", "validate", "analyze"):
            p.add_argument("schedule", metavar="SCHEDULE.yaml", help="the schedule file")
        else:
            if name not in ("runs", "status"):
                p.add_argument("run", metavar="RUN", help="the run id (see: iterprune runs)")
            elif name == "status":
                p.add_argument("run", metavar="RUN", nargs="?", help="one run (default: all)")
        if name not in ("validate", "analyze"):
            p.add_argument(
                "--state-dir",
                metavar="DIR",
                help=f"state directory (default: ${paths.ENV_STATE_DIR}, else ./state)",
            )
        if name == "compare":
            p.add_argument("other", metavar="RUN_B", help="the run to compare with")
        if name == "plot":
            p.add_argument("--out", required=True, metavar="PATH.png", help="the image to write")
            p.add_argument(
                "--round",
                type=int,
                metavar="N",
                help="round of the layer bars (default: last accepted)",
            )
        if name == "export":
            p.add_argument(
                "--round",
                default="last",
                metavar="N|best|last",
                help="which accepted round (default: last; best: the sparsest)",
            )
            p.add_argument("--out", required=True, metavar="PATH", help="the file to write")
            p.add_argument(
                "--format",
                default="pt",
                choices=["pt", "pt2", "safetensors", "sparse", "onnx"],
                help="pt/safetensors: a plain state_dict; sparse: bit-packed mask + values; "
                "onnx: a graph for Netron / ONNX Runtime; pt2: a torch.export program",
            )
            p.add_argument(
                "--input-shape",
                metavar="C,H,W",
                help="onnx: the shape of one example (default: the schedule's benchmark)",
            )
        if name in ("runs", "history", "show", "status", "analyze", "compare"):
            p.add_argument("--json", action="store_true", help="print one JSON document")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
        if name == "start":
            p.add_argument(
                "--detach",
                action="store_true",
                help="serve the run from a background process; log in <state>/logs/RUN.log",
            )
            p.add_argument(
                "--fresh",
                action="store_true",
                help="start a new run id even if this schedule's run exists",
            )
        if name in ("start", "resume"):
            p.add_argument(
                "--lease-timeout",
                type=float,
                default=60.0,
                metavar="SECONDS",
                help="a run whose owner's heartbeat is older than this is taken over (default 60)",
            )
        if name == "show":
            p.add_argument("--round", type=int, metavar="N", help="round (default: last accepted)")
    return parser


_LEFT_GROUP = False  # this process served or followed a run under torchrun


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if _LEFT_GROUP:
        # Leave at once: torch's C++ teardown of the process group at interpreter exit sometimes
        # aborts ("terminate called without an active exception", once in ~17 two-rank runs
        # here), which torchrun reports as a crash. Everything iterprune wrote is already
        # committed and fsynced.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    try:
        return args.fn(args)
    except IterpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the run can be continued with: iterprune resume RUN", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
