"""The documents the inspection commands print: the ``--json`` shapes of DESIGN.md, and more."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from iterprune.core import decisions
from iterprune.errors import UnknownRun, UserError
from iterprune.schedule.specs import Schedule
from iterprune.state import owners
from iterprune.state.backlog import Backlog
from iterprune.state.runs import load_schedule
from iterprune.state.store import Store

ROUND_KEYS = (
    "round",
    "attempt",
    "status",
    "step",
    "target_sparsity",
    "sparsity",
    "params",
    "val_accuracy",
    "drop",
    "duration_s",
    "loss",
    "note",
    "best_epoch",
    "latency_ms_p50",
    "latency_ms_p99",
    "control_accuracy",
    "macs",
    "drop_low",
    "drop_high",
    "lost",
    "gained",
    "test_accuracy",
    "recovered",
    "epochs",
    "control_std",
    "control_n",
)


def _run(store: Store, run: str) -> dict[str, Any]:
    row = store.run(run)
    if row is None:
        known = ", ".join(r["run"] for r in store.runs()) or "none yet"
        raise UnknownRun(f"no run named '{run}' (known runs: {known})")
    return row


def runs(store: Store) -> list[dict[str, Any]]:
    return [
        {
            "run": r["run"],
            "status": r["status"],
            "rounds": r["accepted_rounds"],
            "sparsity": r["sparsity"],
            "val_accuracy": r["val_accuracy"],
            "baseline_accuracy": r["baseline_accuracy"],
            "test_accuracy": r["test_accuracy"],
            "baseline_test_accuracy": r["baseline_test_accuracy"],
            "updated_at": r["updated_at"],
            "disk_bytes": r["disk_bytes"],
            "metric": json.loads(r["metric"])["name"] if r.get("metric") else "accuracy",
        }
        for r in store.runs()
    ]


def metric_of_run(store: Store, run: str) -> dict[str, Any]:
    """The run's metric block (name, unit, higher_is_better): as the run recorded it once its
    task was built, else its schedule's task kind's."""
    row = _run(store, run)
    return json.loads(row["metric"]) if row.get("metric") else load_schedule(store, run).task.metric


def metric_key(key: str, name: str) -> str:
    """A field's name where it leaves the database (TensorBoard, MLflow): ``val_accuracy`` of a
    run judged by perplexity is ``val_perplexity``; a classification run's keep their names."""
    return key.replace("accuracy", name) if key.endswith("accuracy") else key


def history(store: Store, run: str) -> dict[str, Any]:
    row = _run(store, run)
    schedule = load_schedule(store, run)
    validate = schedule.validate
    metric = metric_of_run(store, run)
    return {
        "run": run,
        "status": row["status"],
        "reason": row["reason"],
        "baseline_accuracy": row["baseline_accuracy"],
        "baseline_test_accuracy": row["baseline_test_accuracy"],
        "val_samples": row["val_samples"],
        "max_drop": _budget(validate, row["baseline_accuracy"]),
        "budget": validate.describe(metric["name"]),
        "metric": metric,
        "rule": validate.rule,
        "confidence": validate.confidence,
        "baseline_params": row["baseline_params"],
        "baseline_latency_ms_p50": row["baseline_latency_ms_p50"],
        "baseline_latency_ms_p99": row["baseline_latency_ms_p99"],
        "rounds": [{k: r[k] for k in ROUND_KEYS} for r in store.rounds(run)],
    }


def _budget(validate: Any, baseline: float | None) -> float | None:
    """The budget in points (a relative one needs the baseline; before it: unknown)."""
    if validate.relative:
        return None if baseline is None else validate.budget(baseline)
    return validate.max_drop


def show(store: Store, run: str, round_: int | None = None) -> dict[str, Any]:
    """Per-layer stats of an attempt: the given round's accepted (or last) attempt, else the latest."""
    row = _run(store, run)
    if round_ is None:
        round_ = row["accepted_round"] or 0
    if round_ == 0:
        attempt = 0
    else:
        attempts = [r for r in store.rounds(run) if r["round"] == round_]
        if not attempts:
            raise UserError(f"run '{run}' has no round {round_} (rounds 0..{row['round'] or 0})")
        chosen = next((r for r in attempts if r["status"] == "accepted"), attempts[-1])
        attempt = chosen["attempt"]
    layers = store.layers(run, round_, attempt)
    prune = load_schedule(store, run).prune
    cap, pattern = prune.layer_cap, prune.pattern
    floor = decisions.floors({r["layer"]: r["params"] for r in layers}, cap)
    return {
        "run": run,
        "round": round_,
        "attempt": attempt,
        "max_layer_sparsity": cap,
        **({"pattern": pattern} if pattern else {}),
        "layers": [
            {
                **{k: r[k] for k in ("layer", "params", "nonzero", "sparsity")},
                "capped": decisions.capped(r["nonzero"], floor[r["layer"]]),
                **({"pattern": r.get("pattern")} if pattern else {}),
            }
            for r in layers
        ],
    }


def status(
    store: Store, run: str | None = None, lease_timeout: float = 60.0
) -> list[dict[str, Any]]:
    """What each run is doing, from the database alone.

    A run the database calls running or paused whose process is gone (no such pid on this host,
    or no heartbeat for longer than the lease timeout) is reported as ``interrupted``.
    """
    rows = [_run(store, run)] if run else store.runs()
    out = []
    for r in rows:
        beat = r["heartbeat_at"]
        age = None if beat is None else max(0.0, time.time() - beat)
        state = r["status"]
        if state in ("running", "paused") and owners.gone(r, lease_timeout):
            state = "interrupted"
        out.append(
            {
                "run": r["run"],
                "status": state,
                "phase": r["phase"],
                "round": r["round"],
                "attempt": r["attempt"],
                "progress": r["progress"],
                "pid": r["pid"],
                "heartbeat_age_s": age,
                "next_window_at": r["next_window_at"],
                "error": r["error"],
                "reason": r["reason"],
            }
        )
    return out


def queue(store: Store) -> dict[str, Any]:
    """``iterprune queue --json``: the serve process and every queued run in order."""
    keys = ("position", "run", "status", "priority", "sweep", "held", "round", "added_at")
    return {
        "serve": serve(store),
        "runs": [{k: e[k] for k in keys} for e in Backlog(store).entries()],
    }


def serve(store: Store, lease_timeout: float = 60.0) -> dict[str, Any] | None:
    """The serve process and what each of its devices serves; None when none runs (also when
    its process is gone without saying so, as a run's owner is judged in :func:`status`)."""
    backlog = Backlog(store)
    row = backlog.serve() or {}
    if not row.get("pid") or owners.gone(row, lease_timeout):
        return None
    doc = {k: row.get(k) for k in ("pid", "host", "started_at", "current")}
    names = (row.get("devices") or "cpu").split(",")
    workers = {w["slot"]: w for w in backlog.workers()}
    if len(names) == 1:  # a serve of one device serves in its own process
        workers = {0: doc}
    doc["devices"] = [
        {"slot": i, "device": name, **{k: workers.get(i, {}).get(k) for k in ("pid", "current")}}
        for i, name in enumerate(names)
    ]
    return doc


def ranked(
    docs: list[dict[str, Any]],
    number: Callable[[dict[str, Any], str], float | None] = lambda d, key: d[key],
) -> list[dict[str, Any]]:
    """Best first: the sparsity reached (every accepted round is within the budget), then the
    validation split's metric, better first in the metric's direction (a perplexity: lower),
    fewer epochs, less time. Never the test split's: choosing a sweep's run by it would leave
    no data that did not take part in the choice (it is shown beside, as everywhere). Runs
    judged by different metrics are not compared by them: sparsity, then epochs and time.
    ``number(doc, field)`` reads a field (a setting's: the mean over its seeds)."""
    mixed = len({(d.get("metric") or {}).get("name", "accuracy") for d in docs}) > 1

    def key(d: dict[str, Any]) -> tuple:
        value = number(d, "val_accuracy")
        higher = (d.get("metric") or {}).get("higher_is_better", True)
        better = -(value or 0) if higher else (value if value is not None else float("inf"))
        return (
            -(number(d, "sparsity") or 0),
            0 if mixed else better,
            number(d, "epochs") or 0,
            number(d, "duration_s") or 0,
        )

    out = sorted(docs, key=key)
    return [{"rank": i + 1, **d} for i, d in enumerate(out)]


def setting(schedule: Schedule) -> str:
    """What a run computes, its seed and name aside: runs alike in it are replicates of one
    setting (``compare --over-seeds``). What identifies a run (``Schedule.fingerprint``: the
    fields set away from their defaults, without the operating sections), seed set aside."""
    return dataclasses.replace(schedule, seed=0, name="").fingerprint()


def summary(store: Store, run: str) -> dict[str, Any]:
    """One run in numbers, for ``compare``."""
    row = _run(store, run)
    rounds = store.rounds(run)
    accepted = [r for r in rounds if r["status"] == "accepted"]
    last = accepted[-1] if accepted else None
    schedule = load_schedule(store, run)
    return {
        "run": run,
        "seed": schedule.seed,
        "setting": setting(schedule),  # the same for runs that differ in seed alone
        "status": row["status"],
        "reason": row["reason"],
        "model": row["model"],
        "baseline_accuracy": row["baseline_accuracy"],
        "baseline_test_accuracy": row["baseline_test_accuracy"],
        "sparsity": last["sparsity"] if last else 0.0,
        "val_accuracy": last["val_accuracy"] if last else row["baseline_accuracy"],
        "test_accuracy": last["test_accuracy"] if last else row["baseline_test_accuracy"],
        "epochs": sum(r["epochs"] or 0 for r in rounds),
        "params": last["params"] if last else row["baseline_params"],
        "accepted_rounds": len(accepted),
        "attempts": len(rounds),
        "rolled_back": sum(1 for r in rounds if r["status"] == "rolled_back"),
        "duration_s": sum(r["duration_s"] or 0.0 for r in rounds),
        "control_accuracy": last["control_accuracy"] if last else None,
        "latency_ms_p50": last["latency_ms_p50"] if last else row["baseline_latency_ms_p50"],
        "metric": json.loads(row["metric"]) if row.get("metric") else None,
        "max_drop": (  # the budget in the metric's units, as history has it
            schedule.validate.budget(row["baseline_accuracy"])
            if row["baseline_accuracy"] is not None
            else None
        ),
    }
