"""Checking the schedule's operating sections: ``when`` (time window, pauses, mid-round
checkpoints), ``checkpoints`` (retention), ``benchmark`` (latency) and ``report`` (TensorBoard)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

from iterprune.schedule.checker import Checker, describe
from iterprune.schedule.specs import BenchmarkSpec, CheckpointSpec, MlflowSpec, ReportSpec, WhenSpec
from iterprune.schedule.window import window_problem

KEEP = ("last", "all")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
WHEN_KEYS = ("window", "timezone", "window_policy", "pause_between_rounds", "checkpoint_every")


def _duration(c: Checker, raw: dict, key: str, path: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match and float(match.group(1)) > 0:
        return float(match.group(1)) * _UNIT_S[match.group(2)]
    c.fail(f"{path}.{key}", f"must be a duration like 30s, 10m, 2h, got {describe(value)}")
    return None


def when_section(c: Checker, raw: dict) -> WhenSpec:
    w = c.section(raw, "when", WHEN_KEYS)
    window = c.text(w, "window", "when", None)
    timezone = c.text(w, "timezone", "when", None)
    if window is not None:
        problem = window_problem(window, timezone)
        if problem is not None:
            key = "timezone" if problem.startswith("unknown timezone") else "window"
            c.fail(f"when.{key}", f"{problem} ({window!r})" if key == "window" else problem)
    elif timezone is not None:
        c.fail("when.timezone", "applies only with when.window")
    spec = WhenSpec(
        window=window,
        timezone=timezone,
        window_policy=c.text(w, "window_policy", "when", "finish", ("finish", "pause")) or "finish",
        pause_between_rounds_s=_duration(c, w, "pause_between_rounds", "when"),
    )
    every = w.get("checkpoint_every")
    if every is None:
        return spec
    if isinstance(every, int) and not isinstance(every, bool) and every >= 1:
        return dataclasses.replace(spec, checkpoint_every_batches=every)
    if isinstance(every, str) and _DURATION.match(every):
        seconds = _duration(c, w, "checkpoint_every", "when")
        return dataclasses.replace(spec, checkpoint_every_s=seconds)
    c.fail(
        "when.checkpoint_every",
        "must be a number of batches (>= 1) or a duration like 30s, 10m, 2h, "
        f"got {describe(every)}",
    )
    return spec


def checkpoints_section(c: Checker, raw: dict) -> CheckpointSpec:
    k = c.section(raw, "checkpoints", ("keep",))
    return CheckpointSpec(keep=c.text(k, "keep", "checkpoints", "last", KEEP) or "last")


def benchmark_section(c: Checker, raw: dict) -> BenchmarkSpec | None:
    if raw.get("benchmark") is None:
        return None
    b = c.section(raw, "benchmark", ("batch_size", "input_shape", "iterations", "warmup"))
    shape = b.get("input_shape", [3, 224, 224])
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in shape)
    ):
        c.fail(
            "benchmark.input_shape",
            f"must be a list of positive integers like [3, 224, 224], got {describe(shape)}",
        )
        shape = [3, 224, 224]
    return BenchmarkSpec(
        batch_size=c.count(b, "batch_size", "benchmark", 8),
        input_shape=tuple(shape),
        iterations=c.count(b, "iterations", "benchmark", 20),
        warmup=c.count(b, "warmup", "benchmark", 3, minimum=0),
    )


def report_section(c: Checker, raw: dict) -> ReportSpec:
    r = c.section(raw, "report", ("tensorboard", "mlflow"))
    logdir = c.text(r, "tensorboard", "report", None)
    if logdir is not None and importlib.util.find_spec("tensorboard") is None:
        c.fail(
            "report.tensorboard",
            "needs the tensorboard package: pip install 'iterprune[tensorboard]'",
        )
    return ReportSpec(tensorboard=logdir, mlflow=_mlflow(c, r))


def _mlflow(c: Checker, r: dict) -> MlflowSpec | None:
    """``report.mlflow: {tracking_uri, experiment}`` (``{}`` or ``true``: all defaults)."""
    if "mlflow" not in r or r["mlflow"] is False or r["mlflow"] is None:
        return None
    if r["mlflow"] is True:
        r = {**r, "mlflow": {}}
    m = c.section(r, "mlflow", ("tracking_uri", "experiment"), "report")
    spec = MlflowSpec(
        tracking_uri=c.text(m, "tracking_uri", "report.mlflow", None),
        experiment=c.text(m, "experiment", "report.mlflow", "iterprune") or "iterprune",
    )
    if importlib.util.find_spec("mlflow") is None:
        c.fail("report.mlflow", "needs MLflow: pip install 'iterprune[mlflow]'")
    return spec
