"""The ``iterprune`` command line: the table of commands and the parser built from it.

Each command names the function that does it as ``module:function`` (in ``reading.py``,
``commands.py``, ``queue.py`` or ``upkeep.py``), imported only when that command runs: ``iterprune --help`` and
the reading commands never load torch. :func:`reading.guarded` turns errors into messages and
exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from iterprune.cli.reading import guarded
from iterprune.errors import EXIT_OK
from iterprune.state import paths

Arg = tuple[tuple[str, ...], dict[str, Any]]  # add_argument's flags and options


STATE_HELP = f"state directory (default: ${paths.ENV_STATE_DIR}, else ./state)"
STATE = (("--state-dir",), {"metavar": "DIR", "help": STATE_HELP})
JSON = (("--json",), {"action": "store_true", "help": "print one JSON document"})
RUN = (("run",), {"metavar": "RUN", "help": "the run id (see: iterprune runs)"})
SCHEDULE = (("schedule",), {"metavar": "SCHEDULE.yaml", "help": "the schedule file"})
LEASE = (
    ("--lease-timeout",),
    {
        "type": float,
        "default": 60.0,
        "metavar": "SECONDS",
        "help": "a run whose owner's heartbeat is older than this is taken over (default 60)",
    },
)
FORMATS = "pt/safetensors: a plain state_dict; sparse: bit-packed mask + values; "
FORMATS += "onnx: a graph for Netron / ONNX Runtime; pt2: a torch.export program; "
FORMATS += "semi_structured: 2:4 Linear weights as sparse tensors for NVIDIA GPUs (needs CUDA)"


def _flag(name: str, help_text: str) -> Arg:
    return (name,), {"action": "store_true", "help": help_text}


def _option(name: str, metavar: str, help_text: str, **extra: Any) -> Arg:
    return (name,), {"metavar": metavar, "help": help_text, **extra}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    examples: tuple[str, ...]
    run: str  # "module:function" in iterprune.cli; a queue action may name its own
    args: tuple[Arg, ...] = ()
    actions: tuple[tuple[str, str], ...] = ()  # (action, "module:function") overriding ``run``

    def function(self, args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
        """The function that carries out this command, imported now."""
        ref = dict(self.actions).get(getattr(args, "action", None), self.run)
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(f"iterprune.cli.{module}"), name)


COMMANDS = [
    Command(
        "start",
        "start (or continue) a run from a schedule",
        ("iterprune start schedules/digits.yaml", "iterprune start my.yaml --detach --state-dir /data/prune"),
        "commands:cmd_start",
        (SCHEDULE, STATE, LEASE,
         _flag("--detach", "serve the run from a background process; log in <state>/logs/RUN.log"),
         _flag("--fresh", "start a new run id even if this schedule's run exists")),
    ),
    Command("resume", "continue a stopped or interrupted run", ("iterprune resume digits-cnn",),
            "commands:cmd_resume", (RUN, STATE, LEASE)),
    Command("validate", "check a schedule and report every problem at once",
            ("iterprune validate schedules/digits.yaml",), "commands:cmd_validate", (SCHEDULE,)),
    Command("analyze", "weights and per-layer sensitivity of a schedule's model or a run's round",
            ("iterprune analyze schedules/resnet50-imagefolder.yaml --json",
             "iterprune analyze digits-cnn --sensitivity",
             "iterprune analyze digits-cnn --sensitivity --levels 0.5,0.9 --batches 4 --plot s.png",
             "iterprune analyze my.yaml --sensitivity --method channel --json"), "commands:cmd_analyze",
            ((("target",), {"metavar": "SCHEDULE.yaml|RUN",
                            "help": "a schedule file (its model and weights) or a run id"}),
             STATE, JSON,
             _flag("--sensitivity", "prune each layer alone at each level and evaluate on the "
                   "validation split; suggests layers for prune.exclude"),
             _option("--levels", "L1,L2,...", "sparsity levels (default 0.5,0.75,0.9,0.95,0.98)",
                     default="0.5,0.75,0.9,0.95,0.98"),
             _option("--method", "METHOD", "magnitude (default) or channel: zero the layer's "
                     "weakest output channels", default="magnitude",
                     choices=["magnitude", "channel"]),
             _option("--batches", "N", "evaluate on the first N validation batches (default: all)",
                     type=int),
             _option("--round", "N", "a run's kept round (default 0: the dense model)", type=int),
             _option("--plot", "FILE.png", "also draw the heatmap (plot extra)"))),
    Command("runs", "list the runs in the state directory",
            ("iterprune runs", "iterprune runs --json"), "reading:cmd_runs", (STATE, JSON)),
    Command("history", "every round and attempt of a run",
            ("iterprune history digits-cnn", "iterprune history digits-cnn --json"), "reading:cmd_history",
            (RUN, STATE, JSON)),
    Command("show", "per-layer parameters, non-zero weights and sparsity of a round",
            ("iterprune show digits-cnn", "iterprune show digits-cnn --round 3 --json"), "reading:cmd_show",
            (RUN, STATE, JSON,
             _option("--round", "N", "round (default: last accepted)", type=int))),
    Command("status", "what a run is doing now (from the database alone)",
            ("iterprune status", "iterprune status digits-cnn --json"), "reading:cmd_status",
            ((("run",), {"metavar": "RUN", "nargs": "?", "help": "one run (default: all)"}),
             STATE, JSON)),
    Command("stop", "ask the process serving a run (or --serve: the serve) to stop",
            ("iterprune stop digits-cnn", "iterprune stop --serve"), "commands:cmd_stop",
            ((("run",), {"metavar": "RUN", "nargs": "?", "help": "the run id"}), STATE,
             _flag("--serve", "stop iterprune serve (its current run checkpoints first)"))),
    Command(
        "export",
        "write a round's weights for use without iterprune (pt, pt2, safetensors, sparse, onnx, "
        "semi_structured)",
        ("iterprune export digits-cnn --round best --format sparse --out digits.sparse.pt",),
        "commands:cmd_export",
        (RUN, STATE,
         _option("--round", "N|best|last", "which accepted round (default: last; best: the "
                 "sparsest)", default="last"),
         _option("--out", "PATH", "the file to write", required=True),
         _option("--format", "FORMAT", FORMATS, default="pt",
                 choices=["pt", "pt2", "safetensors", "sparse", "onnx", "semi_structured"]),
         _option("--input-shape", "C,H,W", "onnx/pt2: the shape of one example (default: the "
                 "schedule's benchmark)"),
         _option("--dtype", "DTYPE", "semi_structured: float16 or bfloat16", default="float16",
                 choices=["float16", "bfloat16"])),
    ),
    Command("plot", "accuracy vs sparsity of every attempt, and per-layer sparsity, as a PNG",
            ("iterprune plot digits-cnn --out digits.png",), "commands:cmd_plot",
            (RUN, STATE, _option("--out", "PATH.png", "the image to write", required=True),
             _option("--round", "N", "round of the layer bars (default: last accepted)",
                     type=int))),
    Command("compare", "runs side by side (two), or ranked (three or more, or a sweep)",
            ("iterprune compare digits-cnn digits-lottery", "iterprune compare --sweep digits",
             "iterprune compare --sweep digits --over-seeds"),
            "commands:cmd_compare",
            ((("runs",), {"metavar": "RUN", "nargs": "*", "help": "the runs to compare"}),
             _option("--sweep", "NAME", "every run of a sweep (see: iterprune queue)"),
             _flag("--over-seeds", "rank settings, each its runs' mean ± sd over their seeds"),
             STATE, JSON)),
    Command("queue", "the queue that iterprune serve works through: list, add, remove",
            ("iterprune queue", "iterprune queue add a.yaml b.yaml --priority 5",
             "iterprune queue remove digits-cnn"), "reading:cmd_queue",
            ((("action",), {"nargs": "?", "default": "list", "choices": ["list", "add", "remove"],
                            "help": "list (default), add SCHEDULE.yaml..., remove RUN..."}),
             (("items",), {"nargs": "*", "metavar": "SCHEDULE.yaml|RUN"}),
             _option("--priority", "N", "higher runs first (default 0)", type=int, default=0),
             STATE, JSON),
            (("add", "queue:cmd_queue"), ("remove", "queue:cmd_queue"))),
    Command("serve", "work through the queue, one run at a time per device, until stopped",
            ("iterprune serve", "iterprune serve --detach --devices cuda:0,cuda:1",
             "iterprune serve --until-empty"),
            "queue:cmd_serve",
            (STATE, LEASE, _option("--devices", "D1,D2", "cpu (default), cuda or cuda:N; "
                                   "several (cuda:0,cuda:1): one run at a time on each, each "
                                   "GPU the only one its run sees", default="cpu"),
             _option("--worker", "SLOT:PID", argparse.SUPPRESS),  # a serve's own workers
             _flag("--detach", "serve from a background process; log in <state>/logs/serve/"),
             _flag("--until-empty", "end when no queued run is left to run"))),
    Command("sweep", "queue a grid of runs from one schedule",
            ("iterprune sweep digits.yaml --set prune.step=0.1,0.2 --set validate.max_drop=0.5,1",
             "iterprune sweep digits.yaml --seeds 0,1,2 --dry-run"), "queue:cmd_sweep",
            (SCHEDULE, STATE,
             (("--set",), {"action": "append", "default": [], "metavar": "SECTION.KEY=V1,V2",
                           "help": "values to try (repeat for a grid)"}),
             _option("--seeds", "S1,S2", "seeds to try"),
             _option("--priority", "N", "higher runs first (default 0)", type=int, default=0),
             _option("--name", "NAME", "the sweep's name (default: the schedule file's)"),
             _flag("--dry-run", "list the runs, queue nothing"))),
    Command("check", "whether the state directory is whole: database, checkpoints, rounds",
            ("iterprune check", "iterprune check digits-cnn --json"), "upkeep:cmd_check",
            ((("runs",), {"metavar": "RUN", "nargs": "*", "help": "runs to check (default: all)"}),
             STATE, JSON)),
    Command("backup", "a consistent copy of the state directory, safe while runs are live",
            ("iterprune backup /mnt/backup/state-2026-11-30",
             "iterprune backup ../copy digits-cnn --state-dir /data/prune"), "upkeep:cmd_backup",
            ((("dest",), {"metavar": "DEST", "help": "a new (or empty) directory"}),
             (("runs",), {"metavar": "RUN", "nargs": "*", "help": "runs to copy (default: all)"}),
             STATE)),
    Command("logs", "the run's event log (-f follows it while the run is served)",
            ("iterprune logs digits-cnn -f",), "reading:cmd_logs",
            (RUN, STATE, (("-f", "--follow"), {"action": "store_true",
                                               "help": "keep printing new events"}))),
]  # fmt: skip # a table: one command per entry reads better than one value per line


NAMES = {c.name for c in COMMANDS}


class _Version(argparse.Action):
    """``--version``: the installed package's version, read only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"iterprune {metadata.version('iterprune')}")
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command ``only`` alone (what a call that names
    its command needs: building all twenty takes longer than most commands do their work)."""
    parser = argparse.ArgumentParser(
        prog="iterprune",
        description="Iterative pruning scheduler: prune, fine-tune, validate, accept or roll back.",
        epilog="Example:\n  iterprune start schedules/digits.yaml\n  iterprune history digits-cnn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS if only is None else [c for c in COMMANDS if c.name == only]:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help[0].upper() + command.help[1:] + ".",
            epilog="Example:\n" + "\n".join(f"  {e}" for e in command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(command_entry=command)
        for flags, options in command.args:
            p.add_argument(*flags, **options)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in NAMES else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    try:
        return guarded(lambda: args.command_entry.function(args)(args))
    except BrokenPipeError:  # `iterprune history RUN --json | head`: the reader left early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
