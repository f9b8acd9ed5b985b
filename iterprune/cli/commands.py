"""The commands of one run that do work: ``validate``, ``analyze``, ``start``, ``resume``,
``stop``, ``export``, ``plot`` and ``compare`` — a thin layer over the library that reads the
arguments, calls the library and prints (``table.py`` holds the table of commands and the parser;
``reading.py`` the commands that only read, and what every command shares).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterprune.cli.reading import emit, guarded, store_for
from iterprune.errors import EXIT_OK, UserError
from iterprune.report import replicates, views
from iterprune.state.store import Store


def cmd_validate(args: argparse.Namespace) -> int:
    from iterprune.schedule import parsing as schedule

    s = schedule.load(args.schedule)
    p = s.prune
    source = s.model.label
    rounds = f"{p.step:.0%} per round to {p.target_sparsity:.0%}"
    if p.n_m is not None:
        n, m = p.n_m
        steps = " → ".join(f"{k}:{m}" for k in range(m - 1, n - 1, -1))
        rounds = (
            f"to the {p.pattern} pattern ({steps}: one weight per group of {m} a round; "
            "prune.step and the step controller are not used, a rolled-back round is retried as "
            "it was)"
        )
    budget = s.validate.describe(_metric_name(s))
    print(
        f"{args.schedule}: OK — run '{s.name}', model {source}, {p.method} pruning {rounds}, "
        f"budget {budget}"
    )
    warning = _resolution_warning(s)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _metric_name(s: Any) -> str:
    """The schedule's metric; a task factory's says its own (it was built once to check it)."""
    if s.task.kind != "factory":
        return s.task.metric["name"]
    from iterprune.engine import tasks

    return tasks.metric_of(tasks.task_for(s.task, s.base_dir), s.task)["name"]


def _resolution_warning(s: Any) -> str | None:
    """Whether the validation split can tell a drop of the budget from none, judged before the
    dense model is measured: as if it got every sample right, the most favourable case."""
    from iterprune.core import evidence
    from iterprune.engine import sources

    if s.task.kind != "classification":
        return None  # per-sequence scores: no right-or-wrong table to size
    try:
        _, val, _ = sources.build_loaders(s.data, s.seed, s.base_dir)
        n = len(val.dataset)
    except (UserError, TypeError, AttributeError):
        return None  # the data cannot be sized here; the run warns once it measures the baseline
    v = s.validate
    seen = evidence.resolution(n, 100.0, v.budget(100.0), v.confidence)
    return None if seen.resolved else seen.message(v.confidence)


def cmd_analyze(args: argparse.Namespace) -> int:
    from iterprune.core import analysis
    from iterprune.report import console
    from iterprune.report import subject as targets

    target = targets.resolve(args.target, args.state_dir, args.round)
    if not args.sensitivity:
        doc = {
            "schedule": target.label,
            "model": target.schedule.model.label,
            "weights": target.weights,
            **analysis.weight_report(target.model, target.schedule.prune.exclude),
        }
        return emit(args, doc, console.analysis_view)
    if target.weights is None:
        console.say(
            "warning: the schedule names no model.weights, so this is a randomly initialised "
            "model; analyse a run's dense model instead: iterprune analyze RUN --sensitivity",
            stderr=True,
        )
    doc = _sensitivity(args, target)
    if args.plot:
        from iterprune.report import plots

        plots.sensitivity_heatmap(doc, Path(args.plot))
        console.say(f"wrote {args.plot}", stderr=True)
    return emit(args, doc, console.sensitivity_table)


def _levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        levels = []
    if not levels or not all(0 < x < 1 for x in levels):
        raise UserError(f"--levels must be fractions in (0, 1) like 0.5,0.9, got {text!r}")
    return levels


def _sensitivity(args: argparse.Namespace, target: Any) -> dict[str, Any]:
    from iterprune.core import pruning, sensitivity
    from iterprune.report import console

    levels = _levels(args.levels)
    if args.batches is not None and args.batches < 1:
        raise UserError(f"--batches must be at least 1, got {args.batches}")
    params = pruning.prunable_parameters(target.model, target.task.exclude)  # not an LM's head
    evaluate, samples = target.evaluator(args.batches)
    metric = target.metric
    total = 1 + len(params) * len(levels)
    with console.progress_bar(total, f"sensitivity of {len(params)} layers") as tick:
        found = sensitivity.analyse(
            params, evaluate, levels, args.method, tick, metric["higher_is_better"]
        )
    max_drop = target.schedule.validate.budget(found["baseline_accuracy"])
    return {
        "model": target.schedule.model.label,
        "source": target.label,
        "weights": target.weights,
        "method": args.method,
        "val_samples": samples,
        "metric": metric,
        "max_drop": max_drop,
        **found,
        "suggested_exclude": sensitivity.suggested_exclude(found["layers"], max_drop),
    }


def cmd_start(args: argparse.Namespace) -> int:
    from iterprune import api

    def opening() -> tuple[Store, str | None]:
        store, run_id = api.open_for_start(args.schedule, args.state_dir, args.fresh)
        row = store.run(run_id) or {}
        if row.get("status") == "finished":
            print(f"run '{run_id}' already finished: {row['reason']}")
            print(f"See it with: iterprune history {run_id}   (start it again with --fresh)")
            return store, None
        return store, run_id

    return _serve(args, opening)


def cmd_resume(args: argparse.Namespace) -> int:
    def opening() -> tuple[Store, str | None]:
        store = store_for(args, write=True)
        row = views.status(store, args.run)[0]
        if row["status"] == "finished":
            print(f"run '{args.run}' already finished: {row['reason']}")
            return store, None
        return store, args.run

    return _serve(args, opening)


def _serve(args: argparse.Namespace, opening: Callable[[], tuple[Store, str | None]]) -> int:
    from iterprune.engine import distributed
    from iterprune.serve import launch

    if not distributed.launched():
        return launch.serve(opening, args.lease_timeout, getattr(args, "detach", False))
    if getattr(args, "detach", False):
        raise UserError(
            "--detach cannot be used under torchrun; run torchrun itself in the background "
            "(nohup, tmux, a systemd unit)"
        )
    launch.leave(guarded(lambda: launch.under_torchrun(opening, args.lease_timeout)))
    return EXIT_OK  # not reached: leave() ends the process


def cmd_stop(args: argparse.Namespace) -> int:
    from iterprune import api

    store = store_for(args, write=True)  # no state: the usual message
    if args.serve or args.run is None:
        from iterprune.cli import queue as serving

        return serving.stop_serve(store, args)
    run = api.Run(args.run, args.state_dir)
    row = run.status()
    if row["status"] not in ("running", "paused"):
        print(f"run '{args.run}' is not being served (status: {row['status']})")
        return EXIT_OK
    from iterprune.state.backlog import Backlog

    by_serve = Backlog(store).serves(args.run)
    run.stop()
    owner = store.run(args.run) or {}
    print(
        f"asked pid {owner.get('pid')} on {owner.get('host')} to stop run '{args.run}': it "
        "finishes the current batch and writes a mid-round checkpoint"
    )
    if by_serve:
        print(
            "serve holds it and moves on; queue its schedule again (iterprune queue add) or resume it"
        )
    else:
        print(f"continue it later with: iterprune resume {args.run}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from iterprune.report import export

    store = store_for(args)
    views.status(store, args.run)  # unknown run -> exit 2
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(x) for x in args.input_shape.split(","))
        except ValueError:
            raise UserError(
                f"--input-shape must look like 3,224,224, got {args.input_shape!r}"
            ) from None
    doc = export.export(store, args.run, args.round, Path(args.out), args.format, shape, args.dtype)
    ratio = doc["bytes"] / doc["dense_state_dict_bytes"]
    percent = "%" if doc["metric"]["name"] == "accuracy" else ""
    print(
        f"wrote {doc['out']} ({doc['format']}): round {doc['round']}, sparsity "
        f"{doc['sparsity']:.2%}, validation {doc['metric']['name']} "
        f"{doc['val_accuracy']:.2f}{percent}"
    )
    print(
        f"size {doc['bytes'] / 2**20:.2f} MiB; the dense state_dict is "
        f"{doc['dense_state_dict_bytes'] / 2**20:.2f} MiB ({ratio:.0%})"
    )
    if "converted" in doc:
        print(
            f"2:4 sparse Linear layers: {', '.join(doc['converted'])}; kept dense: "
            f"{', '.join(doc['dense']) or 'none'}; max output error {doc['max_abs_error']:.3g}"
        )
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from iterprune.report import plots

    store = store_for(args)
    history = views.history(store, args.run)
    layers = views.show(store, args.run, args.round)
    if history["max_drop"] is None:
        raise UserError(f"run '{args.run}' has no baseline yet: nothing to plot")
    plots.plot(history, layers, history["max_drop"], Path(args.out))
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from iterprune.report import console
    from iterprune.state.backlog import Backlog

    store = store_for(args)
    names = list(args.runs)
    if args.sweep:
        names += Backlog(store).sweep(args.sweep)
        if not names:
            raise UserError(f"no runs of sweep {args.sweep!r} in the queue")
    if len(names) < 2:
        raise UserError("compare needs two runs or more (or --sweep NAME)")
    docs = [views.summary(store, run) for run in names]
    if args.over_seeds:
        return emit(args, replicates.grouped(docs), console.settings_table)
    docs = views.ranked(docs)
    return emit(args, docs, console.compare_table if len(docs) == 2 else console.ranking_table)
