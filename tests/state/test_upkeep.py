"""Looking after a state directory: reading it without write access, ``check`` (is it whole?)
and ``backup`` (a consistent copy while a run is live, that ``resume`` continues from)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
from helpers import TINY, checkpoint_state, iterprune, make_runner, merged, run_to_end, write

from iterprune import api
from iterprune.errors import EXIT_DAMAGED, EXIT_INVALID, StateDamaged, UnknownRun, UserError
from iterprune.state.store import Store


def finished(state: Path, **changes) -> str:
    """A finished tiny run in ``state`` (in this process); its id."""
    runner = make_runner(state, merged(TINY, checkpoints={"keep": "all"}, **changes))
    run_to_end(runner)
    runner.store.close()
    return runner.run_id


def test_check_finds_a_damaged_a_missing_and_an_unreferenced_file(tmp_path: Path) -> None:
    run = finished(tmp_path)
    assert api.check(state_dir=tmp_path)["ok"]
    folder = tmp_path / "checkpoints" / run
    (folder / "round-0001-a1.pt").write_bytes(b"not the file that was written")
    (folder / "round-0002-a1.pt").unlink()
    (folder / "left-behind.pt").write_bytes(b"x")
    doc = api.check([run], tmp_path)
    assert not doc["ok"] and doc["integrity"] == "ok"
    problems = "\n".join(doc["problems"])
    assert "round-0001-a1.pt has 29 bytes" in problems
    assert "round-0002-a1.pt is missing" in problems
    assert doc["runs"][0]["unreferenced"] == [f"checkpoints/{run}/left-behind.pt"]
    with pytest.raises(UnknownRun):
        api.check(["nope"], tmp_path)


@pytest.mark.slow
def test_check_finds_a_damaged_newest_checkpoint_and_rounds_out_of_order(tmp_path: Path) -> None:
    run = finished(tmp_path)
    store = Store(tmp_path)
    newest = store.checkpoints(run)[-1]
    data = bytearray((tmp_path / newest["path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (tmp_path / newest["path"]).write_bytes(bytes(data))
    store.db.execute("update rounds set round = 7 where run = ? and round = 2", [run])
    store.db.conn.commit()
    store.close()
    done = iterprune("check", state=tmp_path)
    assert done.returncode == EXIT_DAMAGED, done.stdout + done.stderr
    assert "which a resume continues from, does not load" in done.stdout
    assert "does not match the recorded" in done.stdout
    assert "accepted rounds are [1, 3, 7], not 1 to 3 in order" in done.stdout
    assert "the run records round 3 as accepted, its rows 7" in done.stdout
    doc = json.loads(iterprune("check", run, "--json", state=tmp_path).stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 3


def test_check_reads_each_checkpoint_once(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint can be gigabytes: the one a resume continues from is hashed and unpickled
    from one read, not hashed again to load it."""
    run = finished(tmp_path)
    sizes = [r["bytes"] for r in Store(tmp_path).checkpoints(run)]
    hashed, real = [], hashlib.sha256

    class Counting:
        def __init__(self, data: bytes = b"") -> None:
            self.inner = real(data)
            hashed.append(len(data))

        def update(self, data: bytes) -> None:
            hashed.append(len(data))
            self.inner.update(data)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    assert api.check([run], tmp_path)["ok"]
    assert sum(hashed) == sum(sizes) and len(sizes) >= 3


def without_write_access(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``argv`` in a process that cannot write the state: as root, with every capability dropped
    (root then obeys the permission bits of the files it owns, as any user does)."""
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    env = {**os.environ, "MPLCONFIGDIR": str(cwd)}
    return subprocess.run(
        [*prefix, sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def read_only(root: Path, writable: bool = False) -> None:
    for path in [root, *root.rglob("*")]:
        mode = (
            (0o755 if path.is_dir() else 0o644) if writable else (0o555 if path.is_dir() else 0o444)
        )
        path.chmod(mode)


# the commands, each through the CLI's own entry point, in one process that cannot write the state
READER = """
import contextlib, io, json, sys
import iterprune
from iterprune.cli import table as cli
state, run = sys.argv[1], sys.argv[2]
found = []
for args in json.loads(sys.argv[3]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*args, "--state-dir", state])
    found.append({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps({"commands": found, "training": iterprune.Run(run, state).model().training}))
"""


@pytest.mark.slow
def test_every_reading_command_works_on_a_state_directory_it_cannot_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = finished(state)
    out = tmp_path / "out"
    out.mkdir()
    live = Store(state)  # a writer holds the database open: its WAL and index exist
    live.add_event(run, "info", "note", "written after the directory went read-only")
    other = write(out / "other.yaml", merged(TINY, name="other"))
    reading = [
        ["runs", "--json"],
        ["status", run, "--json"],
        ["history", run, "--json"],
        ["show", run, "--json"],
        ["logs", run],
        ["compare", run, run, "--json"],
        ["check", "--json"],
        ["export", run, "--out", str(out / "m.safetensors"), "--format", "safetensors"],
        ["plot", run, "--out", str(out / "p.png")],
        ["backup", str(out / "copy")],
    ]
    read_only(state)
    try:
        argv = ["-c", READER, str(state), run, json.dumps([*reading, ["start", str(other)]])]
        done = without_write_access(argv, out)
    finally:
        read_only(state, writable=True)
        live.close()
    assert done.returncode == 0, done.stderr  # no traceback ended it
    doc = json.loads(done.stdout)
    *read, writing = doc["commands"]
    assert [(c["args"][0], c["code"]) for c in read] == [(a[0], 0) for a in reading], read
    assert "written after the directory went read-only" in read[4]["out"]
    assert doc["training"] is False  # the API's model() too
    assert writing["code"] != 0 and "not writable" in writing["err"], writing
    assert (out / "m.safetensors").stat().st_size > 0 and (out / "p.png").stat().st_size > 0
    assert api.check(state_dir=out / "copy")["ok"]


def test_a_reader_of_an_older_database_without_write_access_is_told_what_to_do(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "state-0.1", state)
    read_only(state)
    try:
        done = without_write_access(
            ["-m", "iterprune", "runs", "--state-dir", str(state)], tmp_path
        )
    finally:
        read_only(state, writable=True)
    assert done.returncode == EXIT_INVALID, done.stderr
    assert "written by an older iterprune" in done.stderr and "Traceback" not in done.stderr


def test_backup_refuses_a_full_directory_an_unknown_run_and_a_damaged_source(
    tmp_path: Path,
) -> None:
    run = finished(tmp_path / "state", pretrain={"epochs": 1})
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        api.backup(tmp_path / "taken", state_dir=tmp_path / "state")
    with pytest.raises(UserError, match="inside the state directory"):
        api.backup(tmp_path / "state" / "copy", state_dir=tmp_path / "state")
    with pytest.raises(UserError, match="no run 'nope'"):
        api.backup(tmp_path / "one", ["nope"], tmp_path / "state")
    doc = api.backup(tmp_path / "one", [run], tmp_path / "state")
    assert doc["runs"] == [run] and api.check(state_dir=tmp_path / "one")["ok"]
    dense = tmp_path / "state" / "checkpoints" / run / "dense.pt"
    dense.write_bytes(dense.read_bytes()[:-1] + b"?")  # damaged at the source
    with pytest.raises(StateDamaged, match="dense.pt does not match its recorded sha256"):
        api.backup(tmp_path / "two", state_dir=tmp_path / "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "state", "taken"]  # nothing left


LIVE = merged(  # about 7 s: five rounds with a long fine-tune, so that backups land mid-run
    TINY,
    name="live",
    data={"kwargs": {"limit": 1000}},
    finetune={"epochs": 12},
    prune={"target_sparsity": 0.8},
    validate={"max_drop": 100},
)


@pytest.mark.slow
def test_a_backup_taken_while_a_run_is_live_resumes_to_the_same_end(tmp_path: Path) -> None:
    schedule = write(tmp_path / "live.yaml", LIVE)
    source = tmp_path / "source"
    env = {**os.environ, "ITERPRUNE_STATE_DIR": str(source)}
    argv = [sys.executable, "-m", "iterprune", "start", str(schedule)]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    copies: list[tuple[Path, dict]] = []
    while not (source / "iterprune.db").exists():  # the run's first commit
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    while process.poll() is None:
        dest = tmp_path / f"copy-{len(copies)}"
        api.backup(dest, state_dir=source)
        assert api.check(state_dir=source)["ok"]  # beside a live run: no false alarm
        with closing(Store(dest, read_only=True)) as copy:
            copies.append((dest, copy.run("live")))
    assert process.returncode == 0, process.stderr.read()
    live = [(d, row) for d, row in copies if row and row["status"] == "running"]
    assert live, "no backup was taken while the run was live"
    dest, row = max(live, key=lambda c: c[1]["accepted_round"] or 0)
    assert api.check(state_dir=dest)["ok"]
    resumed = iterprune("resume", "live", state=dest)
    assert resumed.returncode == 0, resumed.stderr
    ends = [api.Run("live", s).history()["rounds"] for s in (source, dest)]
    keys = ("round", "attempt", "status", "sparsity", "val_accuracy")
    assert [[r[k] for k in keys] for r in ends[0]] == [[r[k] for k in keys] for r in ends[1]]
    last = ends[0][-1]["round"]
    a, b = (checkpoint_state(s, "live", last)["model"] for s in (source, dest))
    assert all(torch.equal(a[k], b[k]) for k in a)
