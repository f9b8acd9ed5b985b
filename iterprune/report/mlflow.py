"""MLflow tracking (the mlflow extra, imported only here): one MLflow run per iterprune run.

The state database is the truth and MLflow a copy of it. After the baseline, after every attempt
and at the end, the tracker *syncs*: it finds the run's MLflow run (its id is kept with the run;
a tag finds it again if the id was never stored), asks it how many attempts it already holds (the
``iterprune.logged`` tag, written in the same ``log_batch`` as the metrics, so both land or
neither does; a long catch-up goes in batches of whole attempts, each with its own count), and sends the rest. A resumed run therefore continues the same MLflow run and
never logs a round twice, also after a kill -9 between a round's commit and its logging; and when
the tracking server cannot be reached the run goes on, says so once, and the next sync that gets
through sends what is missing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from iterprune.engine.reporter import NullReporter, Reporter
from iterprune.report import views
from iterprune.schedule.specs import MlflowSpec, Schedule
from iterprune.state import faults
from iterprune.state.store import Store

# per attempt, with step = round; rolled-back attempts under "rolled_back/<key>"
METRICS = (
    *("sparsity", "params", "val_accuracy", "drop", "drop_low", "drop_high", "test_accuracy"),
    *("loss", "epochs", "latency_ms_p50", "latency_ms_p99", "macs"),
    *("control_accuracy", "control_std"),
)
LOGGED = "iterprune.logged"  # attempts already in the MLflow run
BATCH = 900  # MLflow takes at most 1000 metrics per log_batch
FINAL = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """The schedule as MLflow params: ``prune.step`` → ``"0.2"``; lists as JSON."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(data) if isinstance(data, list) else str(data)}


def attempt_metrics(row: dict[str, Any], when: int, metric: str = "accuracy") -> list[Any]:
    """An attempt's metrics; the task's carry its name (``val_perplexity`` for a language model)."""
    from mlflow.entities import Metric

    prefix = "" if row["status"] == "accepted" else "rolled_back/"
    return [
        Metric(prefix + views.metric_key(key, metric), float(row[key]), when, row["round"])
        for key in METRICS
        if row.get(key) is not None
    ]


class MlflowTracker(NullReporter):
    """A reporter that keeps an MLflow run in step with the state database (it hears the run's
    start, each attempt and the end; the rest it ignores)."""

    def __init__(
        self, state_dir: Path, run_id: str, schedule: Schedule, spec: MlflowSpec, shown: Reporter
    ) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a down server: fail fast
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.state_dir, self.run_id, self.schedule, self.spec = state_dir, run_id, schedule, spec
        self.shown = shown  # the console, for the one warning
        self.failing = False

    # --- the reporter protocol ---------------------------------------------------------------

    def run_started(self, info: dict[str, Any]) -> None:
        if info.get("baseline_accuracy") is not None:
            self.sync()

    def round_done(self, row: dict[str, Any]) -> None:
        self.sync()

    def run_done(self, status: str, reason: str) -> None:
        self.sync(ended=(status, reason))

    # --- syncing -----------------------------------------------------------------------------

    def sync(self, ended: tuple[str, str] | None = None) -> None:
        """Send what MLflow lacks; a failure is one warning, never an error of the run."""
        try:
            with closing(Store(self.state_dir)) as store:
                sent = self._sync(store, ended)
        except Exception as exc:  # noqa: BLE001 (any failure of tracking is only a warning)
            if not self.failing:
                self.failing = True
                self._say("warning", f"MLflow tracking failed, the run goes on: {_brief(exc)}")
            return
        if self.failing:
            self.failing = False
            self._say("info", f"MLflow tracking works again: sent {sent} attempt(s)")

    def _say(self, level: str, message: str) -> None:
        with closing(Store(self.state_dir)) as store:
            store.add_event(self.run_id, level, "tracking", message)
        self.shown.event(level, "tracking", message)

    def _sync(self, store: Store, ended: tuple[str, str] | None) -> int:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        faults.point("tracking_sync")  # a round committed, not yet logged
        client = MlflowClient(tracking_uri=self.spec.tracking_uri)
        row = store.run(self.run_id) or {}
        mlflow_run = self._mlflow_run(client, store, row)
        done = mlflow_run.data.tags.get(LOGGED)
        rows = [r for r in store.rounds(self.run_id) if r["status"] in ("accepted", "rolled_back")]
        now = int(time.time() * 1000)
        params: list[Any] = []
        metrics: list[Any] = []
        metric = views.metric_of_run(store, self.run_id)
        if done is None:  # a new MLflow run: the schedule and the dense baseline first
            flat = flatten(self.schedule.canonical())
            params = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
            metrics = _baseline(row, now, metric["name"])
        start = int(done or 0)
        per_attempt = [attempt_metrics(r, now, metric["name"]) for r in rows[start:]]
        tags = [RunTag("iterprune.metric", metric["name"])]
        tags += [RunTag("iterprune.higher_is_better", str(metric["higher_is_better"]).lower())]
        mid = mlflow_run.info.run_id
        for i in range(0, len(params), 100):  # params are idempotent: safe to repeat
            client.log_batch(mid, params=params[i : i + 100])
        batches = packed(metrics, per_attempt, start)
        for k, (batch, logged) in enumerate(batches):  # each says how many attempts it completes
            extra = tags if k < len(batches) - 1 or ended is None else [*tags, *_ended(ended)]
            client.log_batch(mid, metrics=batch, tags=[RunTag(LOGGED, str(logged)), *extra])
        if ended is not None:
            self._finish(client, store, mid, ended[0])
        return len(rows) - start

    def _mlflow_run(self, client: Any, store: Store, row: dict[str, Any]) -> Any:
        """This run's MLflow run: by the id kept with the run, else by its tags, else new."""
        if row.get("mlflow_run_id"):
            found = client.get_run(row["mlflow_run_id"])
            if found.info.status != "RUNNING":
                client.update_run(found.info.run_id, status="RUNNING")  # a resumed run
            return found
        experiment = client.get_experiment_by_name(self.spec.experiment)
        eid = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(
                self.spec.experiment, artifact_location=_artifacts(client.tracking_uri)
            )
        )
        tags = {"iterprune.run": self.run_id, "iterprune.state_dir": str(self.state_dir.resolve())}
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        existing = client.search_runs([eid], filter_string=query, max_results=1)
        found = existing[0] if existing else client.create_run(eid, run_name=self.run_id, tags=tags)
        store.update_run(self.run_id, mlflow_run_id=found.info.run_id)
        return client.get_run(found.info.run_id)

    def _finish(self, client: Any, store: Store, mid: str, status: str) -> None:
        """The end: the history document, the plot, the last accepted weights; the status."""
        history = views.history(store, self.run_id)
        client.log_text(mid, json.dumps(history, indent=2, default=str), "history.json")
        with tempfile.TemporaryDirectory() as tmp:
            for path in _files(store, self.run_id, history, Path(tmp)):
                client.log_artifact(mid, str(path))
        client.set_terminated(mid, FINAL.get(status, "KILLED"))


def packed(first: list[Any], per_attempt: list[list[Any]], start: int) -> list[tuple[list, int]]:
    """Whole attempts' metrics in batches of at most BATCH (``first``: the baseline's, if any),
    each with the number of attempts logged once it lands: a kill between two batches of a long
    catch-up then repeats nothing, as the tag written with the metrics says how far it got."""
    batches: list[tuple[list, int]] = []
    batch, logged = list(first), start
    for metrics in per_attempt:
        if batch and len(batch) + len(metrics) > BATCH:
            batches.append((batch, logged))
            batch = []
        batch += metrics
        logged += 1
    return [*batches, (batch, logged)]


def _ended(ended: tuple[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag("iterprune.status", ended[0]), RunTag("iterprune.reason", ended[1])]


def _artifacts(uri: str) -> str | None:
    """A SQLite store keeps its artifacts beside its database file (``mlartifacts/``), not in
    whatever directory the run was started from (MLflow's default); other stores: their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _baseline(row: dict[str, Any], when: int, metric: str = "accuracy") -> list[Any]:
    from mlflow.entities import Metric

    values = {
        views.metric_key("val_accuracy", metric): row.get("baseline_accuracy"),
        views.metric_key("test_accuracy", metric): row.get("baseline_test_accuracy"),
        "params": row.get("baseline_params"),
        "sparsity": 0.0,
        "latency_ms_p50": row.get("baseline_latency_ms_p50"),
    }
    return [Metric(k, float(v), when, 0) for k, v in values.items() if v is not None]


def _files(store: Store, run_id: str, history: dict[str, Any], tmp: Path) -> list[Path]:
    """The accuracy plot (with the plot extra) and the last accepted round as safetensors."""
    from iterprune.report import export, plots
    from iterprune.state import checkpoints

    out = []
    try:
        plot = tmp / "accuracy_vs_sparsity.png"
        plots.plot(history, views.show(store, run_id), history["max_drop"], plot)
        out.append(plot)
    except Exception:  # noqa: BLE001, S110 (no matplotlib: no plot, nothing else is lost)
        pass
    accepted = [r for r in history["rounds"] if r["status"] == "accepted"]
    if accepted:
        chosen = export.choose_round(store, run_id, "last")["checkpoint"]
        state = checkpoints.load(store.state_dir / chosen["path"], chosen["sha256"])
        weights = tmp / f"{run_id}-round{accepted[-1]['round']}.safetensors"
        export.write(state, weights, "safetensors")
        out.append(weights)
    return out


def _brief(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
