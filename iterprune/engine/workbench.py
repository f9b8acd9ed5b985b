"""One rank's working set for a run: its device, model, data, optimizer and mixed-precision rule.

Rank 0's runner and the other ranks under torchrun set up the same way through :class:`Workbench`,
so they cannot drift apart (device choice, the AMP rule, sharded loaders, the optimizer). The
workbench holds the model that is being pruned; the runner decides what happens to it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
from torch import nn

from iterprune.core import channels, decisions, latency, patterns, pruning, rng, selection, wanda
from iterprune.engine import distillation, evaluation, heap, recipe, sources, tasks, training
from iterprune.engine.distributed import Group, shard
from iterprune.errors import UserError
from iterprune.schedule.specs import BenchmarkSpec, Schedule


def pick_device(wanted: str, amp: str, group: Group | None) -> torch.device:
    """The schedule's ``device`` on this machine (under torchrun: this rank's GPU)."""
    if group is not None:
        device = group.device = group.device_for(wanted)
    elif wanted == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {wanted} was asked for, but CUDA is not available here")
    if amp == "on" and device.type != "cuda":
        raise UserError(
            f"finetune.amp: true needs a CUDA device, and this run is on {device}; "
            "use amp: auto (mixed precision on CUDA only) or false"
        )
    return device


class Workbench:
    """The model being pruned, its data and optimizer, on this rank's device.

    ``weights``: build the model with the schedule's weights file (rank 0); the other ranks build
    it without, since rank 0 sends them its weights.
    """

    def __init__(
        self, schedule: Schedule, threads: int, group: Group | None = None, weights: bool = True
    ) -> None:
        s = self.schedule = schedule
        self.task = tasks.task_for(s.task, s.base_dir)
        self.metric = tasks.metric_of(self.task, s.task)
        self.group = group
        self.threads = threads
        self.pin_threads()
        heap.keep_freed_blocks()  # CPU steps stop mapping their activations afresh
        rng.deterministic()
        self.device = pick_device(s.device, s.finetune.amp, group)
        self.amp = self.device.type == "cuda" and s.finetune.amp != "off"
        build = sources.build_model if weights else sources.fresh_model
        self.model: nn.Module = build(s.model, s.seed, s.base_dir).to(self.device)
        train, val, test = sources.build_loaders(
            s.data, s.seed, s.base_dir, pin_memory=self.device.type == "cuda"
        )
        if group is not None:
            train, val = shard(train, group, train=True), shard(val, group, train=False)
            test = shard(test, group, train=False) if test is not None else None
        self.train_loader, self.val_loader, self.test_loader = train, val, test
        self.channel = s.prune.method == "channel"
        self.params = pruning.prunable_parameters(self.model, self.exclude)
        if not self.params:
            raise UserError(
                "the model has no prunable Conv or Linear weights (check prune.exclude)"
            )
        self.optimizer = self.new_optimizer()
        self.warnings: list[str] = []  # for the run's log, once it has one
        self.pattern_layers = self._pattern_layers()
        self.teacher: nn.Module | None = None  # finetune.distill: see teach()
        self._taught: object = None

    @property
    def exclude(self) -> tuple[str, ...]:
        """What is never pruned: the schedule's patterns and the task's (a language model's
        output head)."""
        return (*self.schedule.prune.exclude, *self.task.exclude)

    def pin_threads(self) -> None:
        """The run's thread count (it changes float results); call it in every thread that
        trains, since OpenMP keeps the setting per thread."""
        torch.set_num_threads(self.threads)

    def new_optimizer(self) -> torch.optim.Optimizer:
        self.optimizer = recipe.optimizer(self.schedule.finetune, self.model)
        return self.optimizer

    def load(self, state: dict[str, torch.Tensor], architecture: dict | None) -> None:
        """Load weights; a channel-pruned architecture is rebuilt from a fresh model first (and
        gets a new optimizer, since the old one holds the removed parameters)."""
        s = self.schedule
        model = channels.fit(
            self.model,
            state,
            architecture,
            lambda: sources.fresh_model(s.model, s.seed, s.base_dir),
        )
        if model is not self.model:
            self.model = model.to(self.device)
            self.params = pruning.prunable_parameters(self.model, self.exclude)
            self.new_optimizer()

    def restore(
        self, model: dict[str, torch.Tensor], architecture: dict | None, optimizer: dict | None
    ) -> None:
        """Weights, architecture and optimizer state exactly as given (a fresh optimizer for
        None); the given state is copied, never shared."""
        self.load(model, architecture)
        if optimizer is None:
            self.new_optimizer()
        else:
            self.optimizer.load_state_dict(copy.deepcopy(optimizer))

    def state(self, mask: pruning.Mask) -> dict[str, Any]:
        """What a checkpoint of an accepted round holds (references, not copies)."""
        return {
            "model": self.model.state_dict(),
            "mask": mask,
            "optimizer": self.optimizer.state_dict(),
            "architecture": self.architecture(),
        }

    def architecture(self) -> dict[str, dict[str, int]] | None:
        """Channel mode: the layer shapes of the (smaller) model; else None."""
        return channels.architecture(self.model) if self.channel else None

    def alive(self, mask: pruning.Mask) -> int:
        """Prunable weights left: the mask's survivors, or (channel mode) the model's weights."""
        if self.channel:
            return sum(p.numel() for p in self.params.values())
        return pruning.count_alive(mask)

    def floors(self) -> dict[str, int]:
        """The fewest weights each layer keeps (prune.max_layer_sparsity, global methods)."""
        sizes = {n: p.numel() for n, p in self.params.items()}
        return decisions.floors(sizes, self.schedule.prune.layer_cap)

    @cached_property
    def flipped(self) -> frozenset[str]:
        """Weights stored ``[in, out]`` (GPT-2's Conv1D)."""
        named = {f"{n}.weight": m for n, m in self.model.named_modules()}
        return frozenset(n for n in self.params if wanda.transposed(named[n]))

    def _pattern_layers(self) -> set[str]:
        """The layers that can hold ``prune.pattern`` (fan-in a multiple of M); the others are
        skipped with a warning, or refused under ``prune.strict``."""
        found = self.schedule.prune.n_m
        if found is None:
            return set()
        m, p = found[1], self.schedule.prune
        fit = {n for n, w in self.params.items() if patterns.fits(w.shape, m, n in self.flipped)}
        skipped = [n.removesuffix(".weight") for n in self.params if n not in fit]
        if skipped and p.strict:
            raise UserError(
                f"prune.pattern {p.pattern}: the fan-in of {', '.join(skipped[:8])} is not a "
                f"multiple of {m} (prune.strict: true); exclude them or drop strict"
            )
        if skipped:
            self.warnings.append(
                f"prune.pattern {p.pattern} skips {', '.join(skipped[:8])}"
                + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
                + f": their fan-in is not a multiple of {m}; they stay dense"
            )
        return fit

    def pattern_room(self, mask: pruning.Mask) -> int | None:
        """N:M: the weights the next round removes; None without a pattern."""
        found = self.schedule.prune.n_m
        if found is None:
            return None
        return patterns.room(mask, found[0], found[1], self.pattern_layers, self.flipped)

    def layer_stats(self) -> list[dict[str, Any]]:
        """Per prunable layer: parameters, non-zeros and sparsity, measured on the weights; with
        ``prune.pattern``, whether it holds there (``holds``, ``no``, or ``skipped``)."""
        rows = pruning.layer_stats(self.model, self.exclude)
        found = self.schedule.prune.n_m
        for row in rows if found is not None else []:
            name = f"{row['layer']}.weight"
            held = name in self.pattern_layers and patterns.holds(
                self.params[name].detach() != 0, *found, name in self.flipped
            )
            row["pattern"] = (
                "skipped" if name not in self.pattern_layers else "holds" if held else "no"
            )
        return rows

    def room(self, mask: pruning.Mask) -> int | None:
        """Weights the layer caps still let a global method remove; None without caps."""
        if self.schedule.prune.layer_cap >= 1:
            return None
        return selection.capacity(mask, self.floors())

    @cached_property
    def example(self) -> torch.Tensor:
        """One training input, to trace the model's graph (channel mode)."""
        return sources.example_input(self.train_loader, self.device)

    def remove_channels(self, fraction: float) -> pruning.Mask:
        """Physically remove ``fraction`` of the channels; the optimizer is rebuilt."""
        p = self.schedule.prune
        channels.remove_channels(self.model, self.example, fraction, p.scope, p.exclude)
        self.params = pruning.prunable_parameters(self.model, self.exclude)
        self.new_optimizer()
        return pruning.dense_mask(self.params)

    def macs(self) -> int | None:
        return channels.macs_and_params(self.model, self.example)[0] if self.channel else None

    def scaler(self, state: dict | None = None) -> Any:
        """A GradScaler under mixed precision (with ``state`` loaded), else None."""
        if not self.amp:
            return None
        scaler = torch.amp.GradScaler("cuda")
        if state:
            scaler.load_state_dict(state)
        return scaler

    def answers(self, split: str = "val") -> evaluation.Answers | evaluation.Scores | None:
        """Which samples of the validation (or test) split the model gets right (a language
        model: its per-sequence scores); under torchrun the whole split at rank 0 (None
        elsewhere)."""
        loader = self.val_loader if split == "val" else self.test_loader
        return evaluation.answers(self.model, loader, self.device, self.group, self.task)

    def teach(self, state: dict[str, torch.Tensor], architecture: dict | None = None) -> None:
        """The teacher of ``finetune.distill`` holds ``state``: built once per process, on this
        device, frozen; its weights reloaded only when ``state`` is another object."""
        s = self.schedule
        if s.finetune.distill is None or state is self._taught:
            return
        fresh = lambda: sources.fresh_model(s.model, s.seed, s.base_dir)  # noqa: E731
        model = channels.fit(self.teacher or fresh(), state, architecture, fresh)
        self.teacher = distillation.freeze(model.to(self.device))
        self._taught = state

    def teach_from(
        self, accepted: Any, dense: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, torch.Tensor], dict | None] | None:
        """Point the teacher at the accepted round (``teacher: last``) or, once per process, at
        the dense model: the accepted state at round 0, else ``dense()`` (its checkpoint). What
        it now holds (weights, layer shapes); None when nothing changed."""
        d = self.schedule.finetune.distill
        if d is None or (d.teacher == "dense" and self.teacher is not None):
            return None
        if d.teacher == "last" or accepted.round == 0:
            taught = (accepted.model, accepted.architecture)
        else:
            state = dense()
            taught = (state["model"], state.get("architecture"))
        self.teach(*taught)
        return taught

    @property
    def training_task(self) -> Any:
        """What fine-tuning minimises: the task, or the task distilled from the teacher."""
        d = self.schedule.finetune.distill
        if d is None:
            return self.task
        assert self.teacher is not None, "teach() before fine-tuning with a teacher"
        return distillation.Distilled(self.task, self.teacher, d.weight, d.temperature)

    def finetune(
        self, mask: pruning.Mask, epochs: int | None = None, **extra: Any
    ) -> training.TrainResult:
        """Fine-tuning under ``mask``: ``epochs`` (default: the schedule's) of the recipe
        (``extra``: more ``training.Options``)."""
        return recipe.finetune(
            self.schedule.finetune,
            self.model,
            self.params,
            mask,
            self.optimizer,
            (self.train_loader, self.val_loader),
            self.device,
            epochs,
            group=self.group,
            task=self.training_task,
            **extra,
        )

    def latency(self, spec: BenchmarkSpec | None) -> dict[str, float]:
        """Inference latency of the model, when the schedule has a benchmark section."""
        if spec is None:
            return {}
        tokens = isinstance(self.task, tasks.LanguageModel)
        shape, batch = spec.input_shape, spec.batch_size
        ms = latency.measure(
            self.model, shape, batch, spec.iterations, spec.warmup, self.device, tokens
        )
        return {"latency_ms_p50": ms["p50"], "latency_ms_p99": ms["p99"]}
