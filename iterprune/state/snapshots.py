"""A run's checkpoints as the runner sees them: write one and record it, find the newest that
verifies, continue from a mid-round one, and clean up what is no longer referenced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterprune.errors import CheckpointCorrupt
from iterprune.state import checkpoints, paths
from iterprune.state.store import Store

Warn = Callable[[str, str], None]  # (kind, message)


class Snapshots:
    def __init__(self, store: Store, run_id: str, warn: Warn) -> None:
        self.store = store
        self.run_id = run_id
        self.state_dir = store.state_dir
        self.warn = warn

    def write(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Write ``state`` crash-safely; the row fields (path, sha256, bytes) to record it with."""
        written = checkpoints.save(state, path)
        return {
            "path": str(path.relative_to(self.state_dir)),
            "sha256": written.sha256,
            "bytes": written.bytes,
        }

    def write_accepted(self, round_: int, attempt: int, state: dict[str, Any]) -> dict[str, Any]:
        """Write an accepted round's checkpoint; the row to record it with."""
        path = paths.checkpoint_file(self.state_dir, self.run_id, round_, attempt)
        return {"round": round_, "attempt": attempt, "kind": "accepted", **self.write(path, state)}

    def save_mid(self, round_: int, attempt: int, batches: int, state: dict[str, Any]) -> None:
        path = paths.mid_checkpoint_file(self.state_dir, self.run_id, round_, attempt, batches)
        row = self.write(path, state)
        self.forget(self.store.replace_mid(self.run_id, round_, attempt, row))

    def newest_valid(self, up_to_round: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(row, state) of the newest dense/accepted checkpoint that passes its sha256 check."""
        rows = [
            c
            for c in reversed(self.store.checkpoints(self.run_id))
            if c["kind"] in ("dense", "accepted") and c["round"] <= up_to_round
        ]
        for row in rows:
            try:
                return row, checkpoints.load(self.state_dir / row["path"], row["sha256"])
            except CheckpointCorrupt as exc:
                self.warn("corrupt", f"{exc}; trying an older checkpoint")
        raise CheckpointCorrupt(
            f"run '{self.run_id}' has no valid checkpoint left in {self.state_dir}; start it "
            f"again with: iterprune start SCHEDULE.yaml --fresh"
        )

    def rewind_point(self) -> dict[str, Any]:
        """The lottery rewind weights; without them the run cannot go on (exit code 5)."""
        rows = [c for c in self.store.checkpoints(self.run_id) if c["kind"] == "rewind"]
        if not rows:
            raise CheckpointCorrupt(
                f"run '{self.run_id}' has no recorded rewind point; start it again with --fresh"
            )
        try:
            return checkpoints.load(self.state_dir / rows[-1]["path"], rows[-1]["sha256"])["model"]
        except CheckpointCorrupt as exc:
            raise CheckpointCorrupt(
                f"{exc}. It holds the lottery rewind point, which every round needs; start the run "
                "again with: iterprune start SCHEDULE.yaml --fresh"
            ) from None

    def mid(
        self, round_: int, attempt: int, world: int = 1
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(row, state) of the attempt's mid-round checkpoint, if it has one that verifies and
        was written by ``world`` ranks (with another number of ranks the shards, and so the
        batches, differ: the attempt is then redone from its start)."""
        row = self.store.mid_checkpoint(self.run_id, round_, attempt)
        if row is None:
            return None
        try:
            state = checkpoints.load(self.state_dir / row["path"], row["sha256"])
        except CheckpointCorrupt as exc:
            self.warn("corrupt", f"{exc}; redoing round {round_}.{attempt} from its start")
            self.forget(self.store.drop_mids(self.run_id, round_, attempt))
            return None
        if state.get("world", 1) != world:
            self.warn(
                "resume",
                f"the mid-round checkpoint of round {round_}.{attempt} was "
                f"written by {state.get('world', 1)} rank(s) and this run has {world}: "
                "the attempt is redone from its start",
            )
            return None
        return row, state

    def forget(self, files: list[str]) -> None:
        """Delete files whose rows are already gone (a crash in between leaves them to sweep)."""
        for rel in files:
            (self.state_dir / rel).unlink(missing_ok=True)

    def sweep(self) -> list[Path]:
        """Remove temporary files and files no row references (left by a crash)."""
        keep = {self.state_dir / c["path"] for c in self.store.checkpoints(self.run_id)}
        return checkpoints.sweep(paths.checkpoint_dir(self.state_dir, self.run_id), keep)
