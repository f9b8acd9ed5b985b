"""Mid-round checkpoints: a stop or a crash inside a long fine-tuning epoch loses at most
``when.checkpoint_every`` of work, and the continued attempt ends as if never interrupted."""

from __future__ import annotations

from pathlib import Path

from helpers import (
    Recorder,
    StopAfter,
    assert_same_tensors,
    final_state,
    make_runner,
    run_to_end,
    tiny,
)

from iterprune.engine.runner import Runner
from iterprune.state.store import Store


def test_stop_mid_epoch_writes_a_checkpoint_and_resume_continues_exactly(tmp_path: Path) -> None:
    doc = tiny(finetune={"epochs": 3})
    whole = make_runner(tmp_path / "a", doc)
    run_to_end(whole)
    expected_rows, expected_weights = final_state(whole)

    stopper = StopAfter(47)  # 30 batches in round 1, then round 2, epoch 2, batch 7 of 10
    first = make_runner(tmp_path / "b", doc, stopper)
    run_to_end(first)
    mid = [c for c in first.store.checkpoints("tiny") if c["kind"] == "mid"]
    assert len(mid) == 1 and (mid[0]["round"], mid[0]["attempt"]) == (2, 1)
    assert first.store.rounds("tiny")[-1]["status"] == "interrupted"
    first.store.close()

    resumed = Runner(Store(tmp_path / "b"), "tiny", Recorder())
    resumed.prepare()
    run_to_end(resumed)
    rows, weights = final_state(resumed)
    assert rows == expected_rows
    assert_same_tensors(weights, expected_weights)
    messages = [e["message"] for e in resumed.store.events("tiny")]
    assert any("continuing round 2.1 at epoch 2, batch 7" in m for m in messages), messages
    assert not [c for c in resumed.store.checkpoints("tiny") if c["kind"] == "mid"]
    assert not list((tmp_path / "b" / "checkpoints" / "tiny").glob("*-mid-*"))


def test_checkpoint_every_n_batches_keeps_only_the_newest(tmp_path: Path) -> None:
    stopper = StopAfter(25)
    doc = tiny(finetune={"epochs": 2}, when={"checkpoint_every": 4})
    runner = make_runner(tmp_path, doc, stopper)
    saved = []
    real = runner.snapshots.save_mid
    runner.snapshots.save_mid = lambda r, a, n, state: (
        saved.append((r, a, n)),
        real(r, a, n, state),
    )
    run_to_end(runner)
    # round 1: 20 batches, a checkpoint every 4; round 2: stopped after its 5th batch
    assert saved == [(1, 1, 4), (1, 1, 8), (1, 1, 12), (1, 1, 16), (1, 1, 20), (2, 1, 4), (2, 1, 5)]
    mids = [c for c in runner.store.checkpoints("tiny") if c["kind"] == "mid"]
    assert len(mids) == 1 and mids[0]["path"].endswith("mid-0000005.pt")


def test_corrupt_mid_checkpoint_redoes_the_attempt_from_its_start(tmp_path: Path) -> None:
    whole = make_runner(tmp_path / "a", tiny())
    run_to_end(whole)
    expected_rows, _ = final_state(whole)
    first = make_runner(tmp_path / "b", tiny(), StopAfter(15))
    run_to_end(first)
    mid = [c for c in first.store.checkpoints("tiny") if c["kind"] == "mid"][0]
    (tmp_path / "b" / mid["path"]).write_bytes(b"broken")
    resumed = Runner(Store(tmp_path / "b"), "tiny", Recorder())
    resumed.prepare()
    run_to_end(resumed)
    assert final_state(resumed)[0] == expected_rows
    assert any("redoing round" in m for _, _, m in resumed.reporter.events)
