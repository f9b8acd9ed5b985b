"""What ``iterprune analyze`` looks at: a schedule file (its model and weights) or a kept round of a
run (round 0: the dense model), with the schedule's validation data and device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any

from torch import nn

from iterprune.engine import evaluation, sources, tasks
from iterprune.engine.workbench import pick_device
from iterprune.errors import UnknownRun, UserError
from iterprune.report import export
from iterprune.schedule import parsing as schedule
from iterprune.schedule.specs import Schedule
from iterprune.state import paths
from iterprune.state.runs import load_schedule
from iterprune.state.store import DB_NAME, Store


@dataclass
class Target:
    label: str  # the schedule file, or "RUN round N"
    schedule: Schedule
    model: nn.Module
    weights: str | None  # where the weights came from (None: a random initialisation)

    def evaluator(self, batches: int | None) -> tuple[Any, int]:
        """The task's metric over the validation split (its first ``batches`` batches) as a
        function of nothing, and how many samples it judges."""
        s = self.schedule
        device = pick_device(s.device, "off", None)
        self.model.to(device)
        task = self.task
        _, val, _ = sources.build_loaders(s.data, s.seed, s.base_dir)
        chosen = list(islice(val, batches)) if batches else None

        def metric() -> float:
            loader = chosen if chosen is not None else val
            return evaluation.answers(self.model, loader, device, None, task).value

        n = sum(tasks.samples(b) for b in chosen) if chosen is not None else len(val.dataset)
        return metric, n

    @cached_property
    def task(self) -> Any:
        return tasks.task_for(self.schedule.task, self.schedule.base_dir)

    @property
    def metric(self) -> dict[str, Any]:
        """The task's metric block: name, unit, higher_is_better."""
        return tasks.metric_of(self.task, self.schedule.task)


def resolve(target: str, state_dir: str | None, round_: int | None) -> Target:
    """A schedule file when ``target`` names one, else a run in the state directory."""
    path = Path(target)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        if round_ is not None:
            raise UserError("--round applies to a run, not to a schedule file")
        s = schedule.load(path)
        model = sources.build_model(s.model, s.seed, s.base_dir)
        return Target(str(path), s, model, s.model.weights)
    root = paths.state_dir(state_dir)
    if not (root / DB_NAME).exists():
        raise UnknownRun(f"{target!r} is neither a schedule file nor a run (no runs in {root})")
    store = Store(root, read_only=True)
    try:
        if store.run(target) is None:
            raise UnknownRun(f"{target!r} is neither a schedule file nor a run in {root}")
        model, chosen = export.round_model(store, target, str(round_ or 0))
        s = load_schedule(store, target)
    finally:
        store.close()
    return Target(f"{target} round {chosen}", s, model, f"run {target}, round {chosen}")
