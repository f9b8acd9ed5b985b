"""MLflow tracking against a real local tracking store, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Recorder, StopAfter, iterprune, make_runner, parse, run_to_end, tiny, write
from mlflow import MlflowClient

from iterprune.cli import table as cli
from iterprune.engine.reporter import Tee
from iterprune.engine.runner import Runner
from iterprune.errors import ScheduleError
from iterprune.report import mlflow as tracking
from iterprune.serve import launch
from iterprune.state.runs import load_schedule, open_run
from iterprune.state.store import Store

KEYS = ("sparsity", "val_accuracy", "drop", "drop_low", "drop_high", "test_accuracy", "params")


def tracked(uri: str, **changes) -> dict:
    doc = tiny(report={"mlflow": {"tracking_uri": uri, "experiment": "tests"}}, **changes)
    doc["data"] = {**doc["data"], "test_fraction": 0.25}
    return doc


def mlflow_run(uri: str, run_id: str):
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        filter_string=f"tags.`iterprune.run` = '{run_id}'",
    )
    return client, found


def series(client: MlflowClient, mlflow_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(mlflow_id, key)]


def test_metrics_params_tags_and_artifacts_equal_the_history(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "tiny.yaml", tracked(uri, prune={"step": 0.5, "target_sparsity": 0.9}))
    state = str(tmp_path / "s")
    assert cli.main(["start", str(path), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "tiny", "--json", "--state-dir", state]) == 0
    history = json.loads(capsys.readouterr().out)
    client, run = mlflow_run(uri, "tiny")
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.tags["iterprune.status"] == "finished"
    assert run.data.tags["iterprune.reason"] == history["reason"]
    assert run.data.params["prune.step"] == "0.5" and run.data.params["name"] == "tiny"
    accepted = [r for r in history["rounds"] if r["status"] == "accepted"]
    rolled = [r for r in history["rounds"] if r["status"] == "rolled_back"]
    for key in KEYS:
        want = [(r["round"], float(r[key])) for r in accepted if r[key] is not None]
        got = [point for point in series(client, run.info.run_id, key) if point[0] > 0]
        assert got == want, key
        back = [(r["round"], float(r[key])) for r in rolled if r[key] is not None]
        assert series(client, run.info.run_id, f"rolled_back/{key}") == back, key
    assert series(client, run.info.run_id, "val_accuracy")[0] == (0, history["baseline_accuracy"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    last = accepted[-1]["round"]
    assert {"history.json", "accuracy_vs_sparsity.png", f"tiny-round{last}.safetensors"} <= names
    stored = Store(tmp_path / "s").run("tiny")
    assert stored["mlflow_run_id"] == run.info.run_id
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the current directory


def test_a_resumed_run_continues_its_mlflow_run_without_duplicates(
    tmp_path: Path, monkeypatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = tracked(uri, prune={"step": 0.2, "target_sparsity": 0.8})
    real = tracking.attempt_metrics
    calls = {"n": 0}

    def flaky(row, when, metric):  # the first two syncs after a round die: as if killed
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("tracking server went away")
        return real(row, when, metric)

    monkeypatch.setattr(tracking, "attempt_metrics", flaky)
    store = Store(tmp_path / "s")
    open_run(store, parse(doc), "tiny.yaml")
    schedule = load_schedule(store, "tiny")
    stopper = StopAfter(40)
    tracker = tracking.MlflowTracker(
        store.state_dir, "tiny", schedule, schedule.report.mlflow, stopper
    )
    first = Runner(store, "tiny", Tee(stopper, tracker))
    stopper.runner = first
    first.prepare()
    run_to_end(first)
    assert first.close() == "stopped"
    events = [e["message"] for e in store.events("tiny") if e["kind"] == "tracking"]
    assert "the run goes on" in events[0] and "works again" in events[1]
    assert launch.foreground(store, "tiny", 60.0, quiet=True) == 0  # resume, as the CLI does
    client, run = mlflow_run(uri, "tiny")
    assert run.info.status == "FINISHED"
    rounds = [r for r in store.rounds("tiny") if r["status"] == "accepted"]
    steps = [step for step, _ in series(client, run.info.run_id, "sparsity")]
    assert steps == [0] + [r["round"] for r in rounds]  # each once, none lost
    done = [r for r in store.rounds("tiny") if r["status"] in ("accepted", "rolled_back")]
    assert run.data.tags[tracking.LOGGED] == str(len(done))


def test_an_unreachable_server_does_not_fail_the_run(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "tiny.yaml", tracked("http://127.0.0.1:9"))
    state = str(tmp_path / "s")
    assert cli.main(["start", str(path), "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert out.count("MLflow tracking failed, the run goes on") == 1
    store = Store(tmp_path / "s")
    assert store.run("tiny")["status"] == "finished"
    warnings = [e for e in store.events("tiny") if e["kind"] == "tracking"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"


def test_the_mlflow_section_is_validated_like_any_other() -> None:
    with pytest.raises(ScheduleError, match=re.escape("report.mlflow.uri")):
        parse(tiny(report={"mlflow": {"uri": "sqlite:///x.db"}}))
    with pytest.raises(ScheduleError, match="report.mlflow"):
        parse(tiny(report={"mlflow": "yes please"}))
    assert parse(tiny(report={"mlflow": True})).report.mlflow.experiment == "iterprune"
    assert parse(tiny(report={"mlflow": None})).report.mlflow is None


@pytest.mark.slow
def test_a_kill_between_a_rounds_commit_and_its_logging_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "tiny.yaml", tracked(uri, prune={"step": 0.3, "target_sparsity": 0.8}))
    state = tmp_path / "s"
    # the third sync: the baseline and round 1 are logged, round 2 is committed and not
    env = {**os.environ, "ITERPRUNE_KILL_AT": "tracking_sync:3"}
    killed = subprocess.run(
        [sys.executable, "-m", "iterprune", "start", str(path), "--state-dir", str(state)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    done = [r for r in Store(state).rounds("tiny") if r["status"] == "accepted"]
    client, run = mlflow_run(uri, "tiny")
    assert len(done) == 2 and run.data.tags[tracking.LOGGED] == "1"
    assert iterprune("resume", "tiny", state=state).returncode == 0
    client, run = mlflow_run(uri, "tiny")
    rounds = [r["round"] for r in Store(state).rounds("tiny") if r["status"] == "accepted"]
    assert [s for s, _ in series(client, run.info.run_id, "sparsity")] == [0, *rounds]
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_catch_up_cut_between_batches_repeats_nothing(tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = tracked(uri, prune={"step": 0.2, "target_sparsity": 0.8})
    runner = make_runner(tmp_path / "s", doc)  # untracked: everything is left to catch up
    run_to_end(runner)
    schedule = load_schedule(runner.store, "tiny")
    tracker = tracking.MlflowTracker(
        runner.store.state_dir, "tiny", schedule, schedule.report.mlflow, Recorder()
    )
    monkeypatch.setattr(tracking, "BATCH", 20)  # a few attempts per batch, as 900 are in life
    real, sent = MlflowClient.log_batch, []

    def cut(self, run_id, metrics=(), params=(), tags=(), **kw):
        if metrics:
            sent.append(len(metrics))
            if len(sent) == 2:  # the process dies after the first batch of metrics landed
                raise ConnectionError("killed between two batches")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", cut)
    tracker.sync()
    client, run = mlflow_run(uri, "tiny")
    done = [r for r in runner.store.rounds("tiny") if r["status"] in ("accepted", "rolled_back")]
    assert 0 < int(run.data.tags[tracking.LOGGED]) < len(done)  # part of the catch-up landed
    tracker.sync(ended=("finished", "done"))
    client, run = mlflow_run(uri, "tiny")
    assert run.data.tags[tracking.LOGGED] == str(len(done)) and len(sent) > 3
    accepted = [r["round"] for r in done if r["status"] == "accepted"]
    assert [s for s, _ in series(client, run.info.run_id, "sparsity")] == [0, *accepted]
    for key in KEYS:  # every point once: nothing sent twice
        steps = [s for s, _ in series(client, run.info.run_id, key)]
        assert len(steps) == len(set(steps)), key
