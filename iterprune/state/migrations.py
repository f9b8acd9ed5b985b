"""The state database's schema, as sqlite-utils migrations applied in order (``store.py`` runs
them when it opens a database). A state directory written by any earlier release is upgraded in
place; tests/state/test_migrations.py continues one written by 0.1.0."""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from iterprune.state import diagnosis

migrations = Migrations("iterprune")


_TYPES = {"str": str, "int": int, "float": float}


def unapplied(db: Database, path: Path) -> bool:
    """Whether this release has schema steps the database lacks (one read of the applied steps);
    a database with steps this release does not know was written by a newer iterprune: refused."""
    applied = {m.name for m in migrations.applied(db)}
    known = [m.name for m in migrations._migrations]
    newer = sorted(applied - set(known))
    if newer:
        raise diagnosis.newer(path, newer)
    return any(name not in applied for name in known)


def _create(db: Database, table: str, columns: str, **options: object) -> None:
    """Create ``table`` from ``name:type`` words, in order."""
    pairs = (word.split(":") for word in columns.split())
    db[table].create({name: _TYPES[kind] for name, kind in pairs}, **options)  # type: ignore[arg-type]


@migrations(name="0001_initial")
def _initial(db: Database) -> None:
    _create(
        db,
        "runs",
        """run:str status:str phase:str round:int attempt:int step:float reason:str error:str
        schedule:str fingerprint:str schedule_path:str base_dir:str model:str
        baseline_accuracy:float baseline_params:int total_params:int sparsity:float
        val_accuracy:float accepted_round:int pid:int host:str heartbeat_at:float progress:str
        torch_version:str num_threads:int created_at:str updated_at:str""",
        pk="run",
    )
    _create(
        db,
        "checkpoints",
        "id:int run:str round:int attempt:int kind:str path:str sha256:str bytes:int created_at:str",
        pk="id",
        foreign_keys=[("run", "runs", "run")],
    )
    db["checkpoints"].create_index(["run", "round"])
    _create(
        db,
        "rounds",
        """id:int run:str round:int attempt:int status:str step:float target_sparsity:float
        sparsity:float params:int val_accuracy:float drop:float loss:float duration_s:float
        note:str checkpoint_id:int started_at:str finished_at:str""",
        pk="id",
        foreign_keys=[("run", "runs", "run"), ("checkpoint_id", "checkpoints", "id")],
    )
    db["rounds"].create_index(["run", "round", "attempt"], unique=True)
    _create(
        db,
        "layers",
        "run:str round:int attempt:int layer:str position:int params:int nonzero:int sparsity:float",
        pk=("run", "round", "attempt", "layer"),
    )
    _create(db, "events", "id:int run:str at:str level:str kind:str message:str", pk="id")
    db["events"].create_index(["run", "id"])


@migrations(name="0002_latency_and_early_stopping")
def _latency(db: Database) -> None:
    for column in ("latency_ms_p50", "latency_ms_p99"):
        db["rounds"].add_column(column, float)
        db["runs"].add_column(f"baseline_{column}", float)
    db["rounds"].add_column("best_epoch", int)


@migrations(name="0003_lottery_control")
def _lottery(db: Database) -> None:
    db["rounds"].add_column("control_accuracy", float)


@migrations(name="0004_window")
def _window(db: Database) -> None:
    db["runs"].add_column("next_window_at", str)
    db["runs"].add_column("stop_requested", int)


@migrations(name="0005_macs")
def _macs(db: Database) -> None:
    db["rounds"].add_column("macs", int)


@migrations(name="0006_interrupted_attempts")
def _interrupted(db: Database) -> None:
    """Attempts cut short by a stop were stored as 'failed', which reads like a crash."""
    db.execute(
        "update rounds set status = 'interrupted' "
        "where status = 'failed' and note = 'stopped; continued on resume'"
    )


@migrations(name="0007_paired_evidence_and_test_split")
def _evidence(db: Database) -> None:
    """The dense model's per-sample answers, the test split, the drop's interval, recoveries."""
    runs = db["runs"]
    runs.add_column("baseline_correct", bytes)  # bit-packed, in the validation split's order
    runs.add_column("val_samples", int)
    runs.add_column("val_labels", str)  # a digest of the split's labels, in order
    runs.add_column("baseline_test_accuracy", float)
    runs.add_column("test_accuracy", float)  # of the last accepted round
    runs.add_column("streak", int)  # rounds accepted in a row since the step last changed
    rounds = db["rounds"]
    for column, kind in (("drop_low", float), ("drop_high", float), ("lost", int), ("gained", int)):
        rounds.add_column(column, kind)
    for column, kind in (("test_accuracy", float), ("recovered", int), ("epochs", int)):
        rounds.add_column(column, kind)


@migrations(name="0008_control_spread")
def _control_spread(db: Database) -> None:
    """A lottery control trained from several initialisations: their spread and count."""
    db["rounds"].add_column("control_std", float)
    db["rounds"].add_column("control_n", int)


@migrations(name="0009_mlflow_run")
def _mlflow_run(db: Database) -> None:
    """The MLflow run a run reports to, so that a resumed run continues it."""
    db["runs"].add_column("mlflow_run_id", str)


@migrations(name="0010_queue")
def _queue(db: Database) -> None:
    """The queue that ``iterprune serve`` works through, and the serve process itself."""
    db["queue"].create(
        {"run": str, "priority": int, "seq": int, "sweep": str, "held": str, "added_at": str},
        pk="run",
    )
    serve = {"id": int, "pid": int, "host": str, "started_at": str, "heartbeat_at": float}
    db["serve"].create({**serve, "current": str, "stop_requested": int}, pk="id")  # one row


@migrations(name="0011_serve_devices")
def _serve_devices(db: Database) -> None:
    """A serve of several devices: its device list, and one row per device's worker process."""
    db["serve"].add_column("devices", str)
    _create(
        db,
        "serve_slots",
        "slot:int device:str pid:int host:str started_at:str heartbeat_at:float current:str",
        pk="slot",
    )


@migrations(name="0012_baseline_scores")
def _baseline_scores(db: Database) -> None:
    """A language model's dense per-sequence scores (NLL sums and token counts), which every
    attempt is paired with, as a classifier's right-or-wrong bits are in baseline_correct."""
    db["runs"].add_column("baseline_scores", bytes)


@migrations(name="0013_run_metric")
def _run_metric(db: Database) -> None:
    """The metric a run is judged by (name, unit, direction), as its task said at the baseline:
    a task factory names its own."""
    db["runs"].add_column("metric", str)


@migrations(name="0014_layer_pattern")
def _layer_pattern(db: Database) -> None:
    """Whether an N:M pattern (``prune.pattern``) holds in each layer: holds, no, or skipped (its
    fan-in is not a multiple of M); NULL for a run without a pattern."""
    db["layers"].add_column("pattern", str)
