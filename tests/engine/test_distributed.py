"""Under torchrun: two CPU ranks on the gloo backend, launched for real.

The collective helpers are checked in two spawned processes; the whole run goes through
``python -m torch.distributed.run`` (torchrun) and the real CLI, including kills of either rank
and a resume that must end exactly where an uninterrupted two-rank run ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import LM_RUN, checkpoint_state, merged, write
from torch import nn

from iterprune.engine import distributed, evaluation, examples, orders, sources, tasks, training
from iterprune.errors import RanksDisagree
from iterprune.state.runs import load_schedule
from iterprune.state.store import Store

pytestmark = pytest.mark.slow

SCHEDULE = {
    "name": "ddp",
    "seed": 5,
    "threads": 1,
    "model": {"builtin": "digits_cnn", "kwargs": {"width": 8}},
    "data": {"builtin": "digits", "kwargs": {"limit": 423}, "batch_size": 16},
    "pretrain": {"epochs": 3, "lr": 1.0e-2},
    "prune": {"method": "global_magnitude", "step": 0.6, "target_sparsity": 0.98},  # rolls back
    "finetune": {"epochs": 2, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "patience": 1},
    "validate": {"max_drop": 0.5},
    "rollback": {"retries": 1, "shrink": 0.5, "min_step": 0.1},
    "when": {"checkpoint_every": 4},
    "checkpoints": {"keep": "all"},
}


# --- the collective helpers, in two spawned processes -------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(rank: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    group = distributed.Group()
    try:
        # a nested object with tensors of several dtypes arrives intact
        torch.manual_seed(0)  # the same "w" on both ranks, to compare with
        sent = {
            "w": torch.randn(3, 4),
            "m": [torch.tensor([True, False]), torch.tensor(7)],
            "text": "x",
            "none": None,
            "pair": (1, torch.zeros(0)),
            "half": torch.arange(5, dtype=torch.bfloat16).reshape(1, 5)[:, ::2],
        }
        got = group.broadcast(sent if rank == 0 else None)
        assert torch.equal(got["w"], sent["w"]) and torch.equal(got["half"], sent["half"])
        assert got["half"].dtype == torch.bfloat16 and got["half"].shape == (1, 3)
        assert got["m"][0].dtype == torch.bool and got["m"][0].tolist() == [True, False]
        assert got["m"][1].item() == 7 and got["text"] == "x" and got["none"] is None
        assert isinstance(got["pair"], tuple) and got["pair"][1].shape == (0,)
        weights = group.broadcast(sent["w"] if rank == 0 else None)
        assert torch.equal(weights, got["w"])

        # counts are summed exactly; rank 0 alone decides stop / checkpoint
        assert group.sum([rank + 1, 10]) == [3.0, 20.0]
        loss, bad, stop, due = group.agree(1.0 + 2 * rank, False, rank == 0, rank == 1)
        assert (loss, bad, stop, due) == (2.0, False, True, False)
        assert group.agree(1.0, rank == 1, False, False)[1] is True  # any rank's NaN counts

        # a non-finite loss on one rank ends training on both, at the same batch
        torch.manual_seed(2)
        net = nn.Linear(3, 2)
        xs = torch.randn(40, 3)
        if rank == 1:
            xs[20] = float("nan")  # the 3rd batch of 8 of this rank's own data
        data = torch.utils.data.TensorDataset(xs, torch.zeros(40, dtype=torch.long))
        train = torch.utils.data.DataLoader(data, batch_size=8)
        opts = training.Options(group=group)
        result = training.train(net, train, torch.optim.SGD(net.parameters(), lr=0.1), 3, opts)
        assert not result.finite and result.batches == training.AGREE_EVERY
        # with finite (and different) data both ranks finish and report the same mean loss
        net = nn.Linear(3, 2)
        finite = torch.utils.data.TensorDataset(
            torch.randn(40, 3) + 3 * rank, torch.zeros(40, dtype=torch.long)
        )
        result = training.train(
            net,
            torch.utils.data.DataLoader(finite, batch_size=8),
            torch.optim.SGD(net.parameters(), lr=0.1),
            2,
            opts,
        )
        losses = group.gather(result.loss)
        assert result.finite and result.batches == 10
        if rank == 0:
            assert losses[0] == losses[1], losses

        # validation shards: disjoint, unpadded, together the whole set (7 samples, 4 + 3)
        data = torch.utils.data.TensorDataset(torch.arange(7.0), torch.arange(7))
        loader = distributed.shard(torch.utils.data.DataLoader(data, batch_size=2), group, False)
        mine = [int(y) for _, ys in loader for y in ys]
        assert mine == list(range(rank, 7, 2))
        everyone = group.gather(mine)
        if rank == 0:
            assert sorted(sum(everyone, [])) == list(range(7))

        # the digest check passes when the ranks agree and fails when one rank differs
        torch.manual_seed(1)
        model = nn.Linear(4, 2)
        mask = {"weight": torch.ones(2, 4, dtype=torch.bool)}
        for differ in (False, True):
            if rank == 0:
                leader = orders.Leader(group)
                if differ:
                    with pytest.raises(RanksDisagree, match=r"rank\(s\) 1"):
                        leader.verify(model, mask, "round 1.1")
                else:
                    assert leader.verify(model, mask, "round 1.1") == distributed.digest(
                        model.state_dict(), mask
                    )
            else:
                assert isinstance(group.broadcast(), orders.Verify)
                state = {k: v.clone() for k, v in model.state_dict().items()}
                if differ:
                    state["bias"][0] += 1e-6
                group.gather(distributed.digest(state, mask))
    finally:
        group.close()


def test_collectives_between_two_processes() -> None:
    mp.spawn(_ranks, args=(_free_port(),), nprocs=2, join=True)


def test_a_single_process_creates_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: a plain single process
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()


# --- the real CLI under torchrun ----------------------------------------------------------------


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env(state: Path, kill_at: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(ITERPRUNE_STATE_DIR=str(state), ITERPRUNE_KILL_AT=kill_at, OMP_NUM_THREADS="1")
    return env


def _command(*args: str, restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        str(restarts),
        "-m",
        "iterprune",
        *args,
    ]


def torchrun(
    state: Path, *args: str, kill_at: str = "", restarts: int = 0
) -> subprocess.CompletedProcess:
    """Two ranks of ``iterprune ARGS`` under torchrun, to the end."""
    return subprocess.run(
        _command(*args, restarts=restarts),
        env=_env(state, kill_at),
        capture_output=True,
        text=True,
        timeout=300,
    )


def launch(state: Path, *args: str, **popen) -> subprocess.Popen:
    """Two ranks of ``iterprune ARGS`` under torchrun, in the background."""
    return subprocess.Popen(
        _command(*args),
        env=_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def outcome(state: Path) -> tuple[list, str]:
    store = Store(state)
    try:
        run = store.run("ddp")
        assert run["status"] == "finished", run
        rows = [
            (r["round"], r["attempt"], r["status"], r["step"], r["sparsity"], r["val_accuracy"])
            for r in store.rounds("ddp")
        ]
        return rows, _checkpoint_digest(state, store, run["accepted_round"])
    finally:
        store.close()


def _checkpoint_digest(state: Path, store: Store, round_: int) -> str:
    saved = checkpoint_state(state, "ddp", round_)
    return distributed.digest(saved["model"], saved["mask"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One uninterrupted two-rank run: (schedule, state directory)."""
    root = tmp_path_factory.mktemp("ddp")
    schedule = root / "ddp.yaml"
    write(schedule, SCHEDULE)
    done = torchrun(root / "state", "start", str(schedule))
    assert done.returncode == 0, done.stdout + done.stderr
    return schedule, root / "state"


def test_two_ranks_agree_after_every_attempt(reference: tuple[Path, Path]) -> None:
    _, state = reference
    store = Store(state)
    rounds = store.rounds("ddp")
    statuses = {r["status"] for r in rounds}
    assert {"accepted", "rolled_back"} <= statuses, statuses  # the schedule exercises both
    assert any(r["recovered"] for r in rounds)  # and recoveries (more epochs, on both ranks)
    agreed = {}
    for e in store.events("ddp"):
        if e["kind"] == "ranks":
            head = e["message"].split(":")[0]  # "round 2.1"
            agreed[head] = e["message"]
    for r in rounds:
        message = agreed[f"round {r['round']}.{r['attempt']}"]
        assert "all 2 ranks hold identical weights and masks" in message
        if r["status"] == "accepted":  # the agreed digest is the accepted checkpoint's
            assert _checkpoint_digest(state, store, r["round"])[:16] in message
    assert store.run("ddp")["reason"]
    store.close()


def test_validation_answers_reach_rank_0_exactly_over_uneven_shards(
    reference: tuple[Path, Path],
) -> None:
    """Each rank answers its strided shard; rank 0 puts the answers back in order, each sample
    once: the dense model's per-sample answers, every accepted round's accuracy and its lost /
    gained counts are what one process computes over the whole validation set."""
    _, state = reference
    store = Store(state)
    s = load_schedule(store, "ddp")
    _, val, _ = sources.build_loaders(s.data, s.seed, s.base_dir)
    assert len(val.dataset) % 2 == 1  # the two shards are uneven
    _, labels = examples.digits_tensors()
    assert len(examples.split(labels[:423], 0.25, s.seed)[1]) == len(val.dataset)
    run = store.run("ddp")
    dense = evaluation.Reference.from_row(run)
    rounds = {r["round"]: r for r in store.rounds("ddp") if r["status"] == "accepted"}
    for row in store.checkpoints("ddp"):
        if row["kind"] in ("dense", "accepted"):
            saved = checkpoint_state(state, "ddp", row["round"])
            model = sources.build_model(s.model, s.seed, s.base_dir)
            model.load_state_dict(saved["model"])
            alone = evaluation.answers(model, val)  # one process, the whole validation set
            if row["round"] == 0:
                assert torch.equal(alone.correct, dense.correct)
                assert alone.labels_digest() == dense.labels
                assert alone.accuracy == run["baseline_accuracy"]
            else:
                table = alone.against(dense.correct)
                r = rounds[row["round"]]
                assert (alone.accuracy, table.lost, table.gained) == (
                    r["val_accuracy"],
                    r["lost"],
                    r["gained"],
                ), row
    store.close()


def test_kill_either_rank_then_resume_ends_like_the_uninterrupted_run(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    schedule, ref_state = reference
    state = tmp_path / "state"
    # a follower dies mid-fine-tuning: rank 0 notices, marks the run failed, torchrun exits
    crashed = torchrun(state, "start", str(schedule), kill_at="finetune_batch:30@1")
    assert crashed.returncode != 0
    store = Store(state)
    row = store.run("ddp")
    assert row["status"] == "failed" and "lost contact" in row["error"], row
    assert any(r["status"] == "accepted" for r in store.rounds("ddp"))  # it had got somewhere
    store.close()
    # rank 0 itself is killed (SIGKILL), after a mid-round checkpoint
    crashed = torchrun(state, "resume", "ddp", kill_at="finetune_batch:9@0")
    assert crashed.returncode != 0
    # the same state continued by one process: the two-rank mid-round checkpoint does not fit
    single = tmp_path / "single"
    shutil.copytree(state, single)
    alone = subprocess.run(
        [sys.executable, "-m", "iterprune", "resume", "ddp"],
        env=_env(single),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "written by 2 rank(s) and this run has 1" in alone.stdout
    resumed = torchrun(state, "resume", "ddp")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    events = [e["message"] for e in Store(state).events("ddp")]
    assert any("continuing round" in m for m in events), events  # a mid-round checkpoint was used
    assert outcome(state) == outcome(ref_state)


def test_distillation_under_torchrun_every_rank_holds_the_teacher(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each rank distills its shard from the teacher rank 0 sends it (``teacher: last``: the dense
    model, then every accepted round): the ranks agree after every attempt (else the run fails)
    and the weights differ from the run without a teacher. A resumed run sends its teacher the
    same way, at prepare; resume with a teacher is bit-identical in the single-process tests."""
    distill = {"weight": 0.5, "temperature": 2.0, "teacher": "last"}
    schedule = write(tmp_path / "ddp.yaml", merged(SCHEDULE, finetune={"distill": distill}))
    done = torchrun(tmp_path / "state", "start", str(schedule))
    assert done.returncode == 0, done.stdout + done.stderr
    rows, weights = outcome(tmp_path / "state")
    agreed = [e for e in Store(tmp_path / "state").events("ddp") if e["kind"] == "ranks"]
    assert len(agreed) == len(rows)
    assert weights != outcome(reference[1])[1]  # the teacher changed the weights


MODES = {
    "lottery": {
        "lottery": {"rewind": {"epoch": 1}, "control": {"kind": "random_reinit", "seeds": 2}},
        "prune": {"method": "global_magnitude", "step": 0.4, "target_sparsity": 0.7},
    },
    "channel": {"prune": {"method": "channel", "step": 0.3, "target_sparsity": 0.5}},
    "wanda": {  # rank 0 calibrates on its shard and prunes; the mask reaches the other rank
        "prune": {"method": "wanda", "pattern": "2:4", "calibration": {"batches": 2}}
    },
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lottery_channel_and_wanda_modes_under_torchrun(mode: str, tmp_path: Path) -> None:
    """The rewind weights, the control model, the smaller channel-pruned model and a Wanda 2:4
    mask all reach the other rank (channel mode rebuilds the architecture there from rank 0's
    layer shapes)."""
    doc = {
        "name": mode,
        "seed": 4,
        "threads": 1,
        "model": {"builtin": "digits_cnn", "kwargs": {"width": 8}},
        "data": {"builtin": "digits", "kwargs": {"limit": 400}, "batch_size": 32},
        "pretrain": {"epochs": 3, "lr": 3.0e-3},
        "finetune": {"epochs": 2, "optimizer": "adam", "lr": 3.0e-3},
        "validate": {"max_drop": 100},
        **MODES[mode],
    }
    schedule = write(tmp_path / f"{mode}.yaml", doc)
    done = torchrun(tmp_path / "state", "start", str(schedule))
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store(tmp_path / "state")
    rounds = store.rounds(mode)
    assert len(rounds) >= 2 and store.run(mode)["status"] == "finished"
    agreed = [e["message"] for e in store.events(mode) if e["kind"] == "ranks"]
    assert len(agreed) == len(rounds)
    if mode == "lottery":
        assert all(r["control_accuracy"] is not None and r["control_n"] == 2 for r in rounds)
    elif mode == "wanda":  # 4:4 -> 3:4 -> 2:4, every rank agreeing after each
        assert [r["status"] for r in rounds] == ["accepted", "accepted"]
    else:
        assert rounds[-1]["params"] < rounds[0]["params"] and rounds[-1]["macs"] is not None
    store.close()


def test_torchrun_elastic_restart_after_rank_0_is_killed_continues_the_run(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    schedule, ref_state = reference
    state = tmp_path / "state"
    # rank 0 is SIGKILLed mid-round; torchrun restarts both ranks, and the new rank 0 takes the
    # run over (same host: the dead owner's lock is gone) and continues it
    done = torchrun(state, "start", str(schedule), kill_at="finetune_batch:25@0", restarts=1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from round" in done.stdout
    assert outcome(state) == outcome(ref_state)


def _serving(proc: subprocess.Popen, state: Path, run: str, ready) -> None:
    """Wait until rank 0 serves ``run`` and its row satisfies ``ready``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if (state / "iterprune.db").exists():
            store = Store(state)
            row = store.run(run)
            store.close()
            if row and row["pid"] and ready(row):
                return
    proc.kill()
    raise AssertionError(f"{run} never got there:\n{proc.communicate()[0]}")


def test_stop_between_rounds_ends_every_rank_with_exit_code_0(tmp_path: Path) -> None:
    schedule = tmp_path / "ddp.yaml"
    # a pause after each round: the stop lands while rank 0 waits and the others wait for orders
    write(schedule, merged(SCHEDULE, name="stopper", when={"pause_between_rounds": "60s"}))
    state = tmp_path / "state"
    proc = launch(state, "start", str(schedule))
    _serving(proc, state, "stopper", lambda row: (row["accepted_round"] or 0) >= 1)  # after round 1
    stop = subprocess.run(
        [sys.executable, "-m", "iterprune", "stop", "stopper"],
        env=_env(state),
        capture_output=True,
        text=True,
    )
    assert stop.returncode == 0, stop.stderr
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped on all 2 ranks" in out
    store = Store(state)
    assert store.run("stopper")["status"] == "stopped"
    store.close()


def test_ctrl_c_mid_round_stops_every_rank_with_a_checkpoint(tmp_path: Path) -> None:
    """Ctrl-C reaches every process (torchrun's agent even sends the ranks a second SIGINT):
    rank 0 stops all ranks after the same batch with a mid-round checkpoint, and resume finishes."""
    schedule = tmp_path / "ddp.yaml"
    doc = merged(
        SCHEDULE,
        name="ctrlc",
        finetune={"epochs": 60, "patience": 120},  # a round far longer than the wait for it
        prune={"target_sparsity": 0.5},  # one round
    )
    write(schedule, doc)
    state = tmp_path / "state"
    proc = launch(state, "start", str(schedule), start_new_session=True)
    # the fine-tuning phase has begun (an event, not a time): the stop lands at its next batch
    _serving(proc, state, "ctrlc", lambda row: row["phase"] == "finetune")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    out, _ = proc.communicate(timeout=120)
    assert "stopped on all 2 ranks" in out, out  # (torchrun itself exits 1 on a SIGINT)
    store = Store(state)
    assert store.run("ctrlc")["status"] == "stopped"
    assert any(c["kind"] == "mid" for c in store.checkpoints("ctrlc"))
    store.close()
    resumed = torchrun(state, "resume", "ctrlc")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "continuing round 1.1" in resumed.stdout


def test_a_language_model_under_torchrun_is_scored_as_one_process_would(tmp_path: Path) -> None:
    """Rank 0 puts the ranks' per-sequence NLL sums back in the split's order: the dense model's
    scores, their digest and every accepted round's perplexity equal one process's over the
    whole validation split (93 sequences: uneven shards)."""
    doc = merged(LM_RUN, name="ddp-lm", finetune={"patience": 1})
    done = torchrun(tmp_path / "state", "start", str(write(tmp_path / "lm.yaml", doc)))
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store(tmp_path / "state")
    run = store.run("ddp-lm")
    assert run["status"] == "finished"
    agreed = [e["message"] for e in store.events("ddp-lm") if e["kind"] == "ranks"]
    assert agreed and all("all 2 ranks hold identical weights" in m for m in agreed)
    dense = evaluation.Reference.from_row(run)
    s = load_schedule(store, "ddp-lm")
    _, val, _ = sources.build_loaders(s.data, s.seed, s.base_dir)
    assert len(val.dataset) == dense.n and dense.n % 2 == 1
    rounds = {r["round"]: r for r in store.rounds("ddp-lm") if r["status"] == "accepted"}
    assert rounds
    for row in store.checkpoints("ddp-lm"):
        if row["kind"] not in ("dense", "accepted"):
            continue
        model = sources.fresh_model(s.model, s.seed, s.base_dir)
        model.load_state_dict(checkpoint_state(tmp_path / "state", "ddp-lm", row["round"])["model"])
        alone = evaluation.answers(model, val, task=tasks.LANGUAGE_MODEL)
        if row["round"] == 0:
            assert torch.allclose(alone.values, dense.scores.values, rtol=1e-6)
            assert torch.equal(alone.weights, dense.scores.weights)
            assert alone.digest == dense.labels
            assert alone.value == pytest.approx(run["baseline_accuracy"], rel=1e-6)
        else:
            assert alone.value == pytest.approx(rounds[row["round"]]["val_accuracy"], rel=1e-6)
    store.close()
