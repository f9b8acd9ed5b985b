from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny

from iterprune.cli import table as cli


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_start_runs_the_schedule_and_history_json_has_the_contract_shape(
    capsys, write_schedule, state_dir: Path
) -> None:
    path = write_schedule()
    code, out, _ = run_cli(capsys, "start", str(path))
    assert code == 0, out
    assert "target sparsity 60% reached" in out
    assert (state_dir / "iterprune.db").exists()

    code, out, _ = run_cli(capsys, "history", "tiny", "--json")
    assert code == 0
    doc = json.loads(out)
    assert {"run", "status", "baseline_accuracy", "baseline_params", "rounds"} <= doc.keys()
    assert doc["status"] == "finished"
    assert doc["rounds"]
    for r in doc["rounds"]:
        assert {
            "round",
            "attempt",
            "status",
            "step",
            "target_sparsity",
            "sparsity",
            "val_accuracy",
            "drop",
            "duration_s",
            "params",
        } <= r.keys()
        assert r["status"] in ("accepted", "rolled_back", "running", "interrupted", "failed")
        assert 0 <= r["sparsity"] <= 1 and 0 <= r["val_accuracy"] <= 100
    last = [r for r in doc["rounds"] if r["status"] == "accepted"][-1]
    assert last["params"] == round(doc["baseline_params"] * (1 - last["sparsity"]))

    code, out, _ = run_cli(capsys, "runs", "--json")
    runs = json.loads(out)
    assert [r["run"] for r in runs] == ["tiny"]
    assert {
        "run",
        "status",
        "rounds",
        "sparsity",
        "val_accuracy",
        "baseline_accuracy",
        "updated_at",
    } <= runs[0].keys()

    code, out, _ = run_cli(capsys, "show", "tiny", "--json")
    shown = json.loads(out)
    assert shown["round"] == last["round"]
    assert sum(layer["nonzero"] for layer in shown["layers"]) == last["params"]
    assert {"layer", "params", "nonzero", "sparsity"} <= shown["layers"][0].keys()

    code, out, _ = run_cli(capsys, "show", "tiny", "--round", "0", "--json")
    assert all(layer["sparsity"] == 0 for layer in json.loads(out)["layers"])

    code, out, _ = run_cli(capsys, "status", "tiny", "--json")
    status = json.loads(out)
    assert {"run", "status", "phase", "round", "pid", "heartbeat_age_s"} <= status.keys()
    assert status["status"] == "finished"

    for args in (["history", "tiny"], ["runs"], ["show", "tiny"], ["status"]):
        code, out, _ = run_cli(capsys, *args)
        assert code == 0 and "tiny" in out
    code, out, _ = run_cli(capsys, "logs", "tiny")
    assert "dense baseline accuracy" in out and "target sparsity 60% reached" in out

    # the same schedule again: nothing to redo
    code, out, _ = run_cli(capsys, "start", str(path))
    assert code == 0 and "already finished" in out


def test_changed_schedule_is_refused_and_fresh_starts_a_new_run(
    capsys, write_schedule, state_dir: Path
) -> None:
    path = write_schedule(tiny(prune={"target_sparsity": 0.3}))
    assert run_cli(capsys, "start", str(path))[0] == 0
    write_schedule(tiny(prune={"target_sparsity": 0.4}))
    code, _, err = run_cli(capsys, "start", str(path))
    assert code == 2
    assert "prune.target_sparsity: 0.3 -> 0.4" in err and "--fresh" in err
    code, _, _ = run_cli(capsys, "start", str(path), "--fresh")
    assert code == 0
    _, out, _ = run_cli(capsys, "runs", "--json")
    assert [r["run"] for r in json.loads(out)] == ["tiny", "tiny-2"]


def test_invalid_schedule_exits_2_lists_problems_and_writes_nothing(
    capsys, write_schedule, state_dir: Path
) -> None:
    path = write_schedule(
        "model: {builtin: digits_cnn}\ndata: {builtin: digits}\nprune: {step: 1.5, methd: x}\n"
    )
    for command in ("validate", "start"):
        code, out, err = run_cli(capsys, command, str(path))
        assert code == 2
        assert "prune.step (line 3): must be in (0, 1), got 1.5" in err
        assert "prune.methd (line 3): unknown key; did you mean 'method'?" in err
        assert "Traceback" not in err
    assert not state_dir.exists()


def test_validate_accepts_a_good_schedule(capsys, write_schedule) -> None:
    code, out, _ = run_cli(capsys, "validate", str(write_schedule()))
    assert code == 0 and "OK" in out


@pytest.mark.parametrize(
    "args",
    [
        ["history", "nope"],
        ["show", "nope"],
        ["status", "nope"],
        ["resume", "nope"],
        ["stop", "nope"],
        ["logs", "nope"],
    ],
)
def test_unknown_run_exits_2(capsys, write_schedule, state_dir: Path, args: list[str]) -> None:
    doc = {
        "name": "t",
        "model": {"builtin": "digits_mlp"},
        "data": {"builtin": "digits", "kwargs": {"limit": 100}},
        "pretrain": {"epochs": 1},
        "prune": {"step": 0.5, "target_sparsity": 0.5},
    }
    run_cli(capsys, "start", str(write_schedule(doc)))
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert "no run named 'nope'" in err


def test_no_state_yet_lists_no_runs_and_other_commands_say_so(capsys, state_dir: Path) -> None:
    assert run_cli(capsys, "runs", "--json") == (0, "[]\n", "")
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "no runs" in out
    assert run_cli(capsys, "status", "--json") == (0, "[]\n", "")
    assert not state_dir.exists()  # looking creates nothing
    code, _, err = run_cli(capsys, "history", "tiny")
    assert code == 2 and "no iterprune state" in err


def test_an_empty_state_directory_lists_no_runs(capsys, state_dir: Path) -> None:
    from iterprune.state.store import Store

    Store(state_dir).close()  # a database without runs
    assert run_cli(capsys, "runs", "--json") == (0, "[]\n", "")
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "no runs" in out


def test_bad_arguments_exit_2(capsys) -> None:
    assert cli.main(["history"]) == 2
    assert cli.main(["frobnicate"]) == 2


def test_every_command_has_help_with_an_example() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {command.name for command in cli.COMMANDS}
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "Example:" in text and f"iterprune {name}" in text, name


def test_module_entry_point_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "iterprune", "--help"], capture_output=True, text=True, check=True
    )
    assert "Example:" in out.stdout
