"""Every key a schedule may hold: what it accepts, its default (read from the spec itself where
the key is a spec field) and what it does. ``reference.py`` makes the documentation's page from
this table; tests/schedule/test_reference.py fails when the validator accepts a key the table
lacks, or a spec field has no key that sets it."""

from __future__ import annotations

from iterprune.schedule.key import SPEC, Key
from iterprune.schedule.operating_keys import OPERATING_KEYS
from iterprune.schedule.specs import PruneSpec

__all__ = ["KEYS", "SET_BY", "SPEC", "Key"]

# Spec fields that a key of another name (or shape) sets.
SET_BY = {
    "when.checkpoint_every_batches": "when.checkpoint_every",
    "when.checkpoint_every_s": "when.checkpoint_every",
    "when.pause_between_rounds_s": "when.pause_between_rounds",
    "lottery.at": "lottery.rewind",
    "lottery.control_seeds": "lottery.control.seeds",
    "validate.relative": "validate.max_drop",
    "model.huggingface.kind": "model.huggingface.class",
    "prune.calibration_batches": "prune.calibration.batches",
}

_FRACTION = "a number in (0, 1)"
_PATH = "a path, relative to the schedule file"
_ONE = "exactly one of builtin / torchvision / factory / huggingface"

KEYS = (
    Key("name", "letters, digits, `.`, `_`, `-`", "The run id.", "the file's stem"),
    Key("seed", "an integer", "Every attempt's seed derives from it."),
    Key("device", "`auto`, `cpu`, `cuda` or `cuda:N`", "`auto`: the first GPU if any."),
    Key(
        "threads",
        "an integer ≥ 1",
        "torch's intra-op threads; part of the run, since the thread count changes float results.",
        "torch's default",
    ),
    Key("model", "a mapping", f"What is pruned: {_ONE}.", None),
    Key(
        "model.builtin",
        "`digits_cnn`, `digits_mlp` or `tiny_gpt`",
        "A built-in model (kwargs: `width` / `hidden`; `tiny_gpt`, a causal transformer for "
        "`task: {kind: language_model}`: `width`, `depth`, `heads`, `context`, `vocab`).",
    ),
    Key(
        "model.torchvision",
        "a torchvision classification model's name",
        "Randomly initialised, then loaded from `weights` if given.",
    ),
    Key(
        "model.factory",
        "`module:function`",
        "Called as `function(**kwargs)`; must return an "
        "`nn.Module`. Imported with the schedule's directory first on `sys.path`.",
    ),
    Key("model.num_classes", "an integer ≥ 1", "torchvision models: the classifier's outputs."),
    Key(
        "model.huggingface",
        "a mapping",
        "A Hugging Face model from a local `save_pretrained` directory, never the hub (extra "
        "`hf`). Its `Linear` and GPT-2 `Conv1D` layers are pruned; the output head is not.",
        None,
    ),
    Key("model.huggingface.path", _PATH, "The directory, with its config.json.", "required"),
    Key(
        "model.huggingface.class",
        "`causal_lm` or `sequence_classification`",
        "How it is loaded (`AutoModelForCausalLM` or `...ForSequenceClassification`); "
        "`causal_lm` needs `task: {kind: language_model}`.",
        "causal_lm",
    ),
    Key("model.kwargs", "a mapping", "Keyword arguments of the built-in model or the factory."),
    Key(
        "model.weights",
        f"{_PATH} (`.pt`, `.pth`, `.safetensors`)",
        "A state_dict to start from; without it the dense model is trained first (`pretrain`).",
    ),
    Key(
        "model.trust_pickle",
        "`true` or `false`",
        "Also accept a whole pickled `nn.Module` (this runs code from the file).",
    ),
    Key(
        "data",
        "a mapping",
        "What it trains and is judged on: exactly one of builtin / imagefolder / factory / text.",
        None,
    ),
    Key(
        "data.builtin",
        "`digits` or `python_source`",
        "scikit-learn's 1,797 handwritten digits (kwargs: `limit`), or the running Python's "
        "standard library as byte tokens, split by file 80/10/10 (kwargs: `seq_len`, "
        "`max_bytes` of training text; validation and test get a tenth each).",
    ),
    Key("data.imagefolder", "a mapping", "Image folders in torchvision's layout.", None),
    Key("data.imagefolder.train", _PATH, "The training images.", "required"),
    Key(
        "data.imagefolder.val",
        _PATH,
        "The validation images: every decision reads them.",
        "required",
    ),
    Key(
        "data.imagefolder.test",
        _PATH,
        "Measured and reported beside each accepted round; never decides anything.",
    ),
    Key("data.imagefolder.image_size", "an integer ≥ 1", "Resize and crop to this size."),
    Key(
        "data.factory",
        "`module:function`",
        "Called as `function(batch_size=..., **kwargs)`; "
        "returns `(train, val)` or `(train, val, test)` loaders; val and test must not shuffle.",
    ),
    Key(
        "data.text",
        "a mapping",
        "A language model's own UTF-8 text, split by you: each split a file, a directory (its "
        "`.txt`, `.md`, `.py`, … files, recursively) or a glob, read in path order.",
        None,
    ),
    Key("data.text.train", _PATH, "The training text.", "required"),
    Key("data.text.val", _PATH, "The validation text: every decision reads it.", "required"),
    Key("data.text.test", _PATH, "Measured and reported beside each round; decides nothing."),
    Key("data.text.seq_len", "an integer ≥ 2", "Tokens per sequence (one sample)."),
    Key(
        "data.text.tokenizer",
        f"`bytes` or {_PATH}",
        "`bytes`: UTF-8 bytes, a vocabulary of 256 (tiny_gpt's default). A directory written by "
        "a Hugging Face tokenizer's `save_pretrained` (extra `hf`), loaded offline; files are "
        "joined by its end-of-text token.",
    ),
    Key("data.kwargs", "a mapping", "Keyword arguments of the built-in data or the factory."),
    Key("data.batch_size", "an integer ≥ 1", "Batch size of every loader iterprune builds."),
    Key("data.workers", "an integer ≥ 0", "DataLoader worker processes."),
    Key("data.val_fraction", _FRACTION, "Built-in data: the validation share (stratified)."),
    Key(
        "data.test_fraction",
        "a number in [0, 1)",
        "Built-in data: a test share, measured and "
        "reported, never deciding anything (0: no test split).",
    ),
    Key(
        "task",
        "a mapping",
        "What the model is trained and judged by: its loss, its per-sample scores, its metric.",
        None,
    ),
    Key(
        "task.kind",
        "`classification` or `language_model`",
        "classification: cross-entropy, judged by top-1 accuracy (points, higher is better). "
        "language_model: next-token cross-entropy over the real tokens, judged by perplexity "
        "(lower is better; a worse model has a positive drop), sequence by sequence against the "
        "dense model. Batches: token ids `[B, T]`, or dicts with `input_ids` and optionally "
        "`attention_mask` and `labels`.",
    ),
    Key(
        "task.factory",
        "`module:function`",
        "Your own task instead of a kind: called as `function(**kwargs)`, it returns an object "
        "with `loss(model, batch)` (a scalar tensor), `scores(model, batch)` (one float per "
        "sample), `metric` (its name) and `higher_is_better` (see `iterprune.Task`); the metric "
        "is the mean score, paired sample by sample with the dense model's.",
    ),
    Key("task.kwargs", "a mapping", "Keyword arguments of the task factory."),
    Key("pretrain", "a mapping", "Dense training when no weights are given.", None),
    Key("pretrain.epochs", "an integer ≥ 0", "Epochs of dense Adam training (0 skips it)."),
    Key("pretrain.lr", "a number > 0", "Its learning rate."),
    Key("prune", "a mapping", "How each round prunes.", None),
    Key(
        "prune.method",
        "`global_magnitude`, `lamp`, `layer_magnitude`, `random`, `channel`, `wanda`",
        "What is removed: the smallest weights over all layers, LAMP scores, the same share of "
        "each layer, random weights, whole channels (the model gets smaller), or the lowest "
        "|weight| × input-feature norm (Wanda, measured on calibration batches).",
    ),
    Key(
        "prune.group",
        "`row`, `layer` or `global`",
        "wanda: what loses the same share of its weights — each output row (the paper), each "
        "layer — or one ranking over all layers (capped by `max_layer_sparsity`).",
    ),
    Key(
        "prune.pattern",
        '`"N:M"`, e.g. `"2:4"`',
        "At most N of every M consecutive weights of a row survive (2:4 runs faster on NVIDIA "
        "GPUs). Rounds remove one weight per group (4:4 → 3:4 → 2:4) by magnitude or wanda "
        "scores; the target is 1 − N/M and `step` is not used. Layers whose fan-in is not a "
        "multiple of M stay dense, with a warning.",
    ),
    Key("prune.strict", "`true` or `false`", "pattern: a layer that cannot hold it is an error."),
    Key("prune.calibration", "a mapping", "wanda: the data its input norms are measured on.", None),
    Key(
        "prune.calibration.batches",
        "an integer ≥ 1",
        "Training batches, in the attempt's seeded order, run through the current model at the "
        "start of every attempt.",
        PruneSpec.calibration_batches,
    ),
    Key("prune.step", _FRACTION, "The share of the *remaining* weights removed per round."),
    Key("prune.target_sparsity", _FRACTION, "The run ends when it is reached."),
    Key("prune.exclude", "a list of globs", "Module names never pruned (fnmatch), e.g. `[fc]`."),
    Key(
        "prune.scope",
        "`global` or `layer`",
        "Channel mode: rank channels over the whole model or within each layer.",
    ),
    Key(
        "prune.max_layer_sparsity",
        "a number in (0, 1]",
        "global_magnitude and lamp: no "
        "layer is pruned past this; what a capped layer cannot give comes from the others "
        "(1: no cap).",
    ),
    Key("finetune", "a mapping", "The fine-tuning after each prune.", None),
    Key("finetune.epochs", "an integer ≥ 0", "Epochs per round."),
    Key("finetune.optimizer", "`adam`, `adamw` or `sgd`", "Rebuilt after channel removal."),
    Key("finetune.lr", "a number > 0", "Learning rate."),
    Key("finetune.weight_decay", "a number ≥ 0", "Weight decay."),
    Key("finetune.momentum", "a number in [0, 1)", "sgd only."),
    Key("finetune.nesterov", "`true` or `false`", "sgd only."),
    Key(
        "finetune.lr_schedule",
        "`constant` or `cosine`",
        "cosine: decays to 0 over the round's fine-tuning.",
    ),
    Key(
        "finetune.amp",
        "`auto`, `true` or `false`",
        "auto: float16 autocast and a GradScaler on CUDA, off on a CPU.",
    ),
    Key(
        "finetune.patience",
        "an integer ≥ 1",
        "Early stopping: validate every epoch, stop "
        "after N without improvement, keep the best epoch.",
    ),
    Key("finetune.max_batches_per_epoch", "an integer ≥ 1", "Bounds huge epochs."),
    Key(
        "finetune.distill",
        "a mapping",
        "Fine-tune with a teacher: loss = (1 − weight) · task loss + weight · T² · KL(teacher ‖ "
        "student) on the logits (per token for a language model). Absent: off. Costs one more "
        "forward per batch and one more copy of the weights.",
        None,
    ),
    Key("finetune.distill.weight", "a number in (0, 1]", "The teacher's share; 1: no labels."),
    Key("finetune.distill.temperature", "a number > 0", "T: softens both distributions."),
    Key(
        "finetune.distill.teacher",
        "`dense` or `last`",
        "The dense model (round 0), or the last accepted round.",
    ),
    Key("validate", "a mapping", "When a round is accepted.", None),
    Key(
        "validate.max_drop",
        "a number ≥ 0 (≤ 100 for accuracy), or a percentage like `2%`",
        "How much worse a round may be than the dense model, on validation, in the metric's "
        "units (accuracy points; perplexity) or (`2%`) as a share of the dense model's.",
    ),
    Key(
        "validate.rule",
        "`estimate` or `confident`",
        "estimate: accept when the measured drop "
        "is within the budget; confident: when the top of its interval is.",
    ),
    Key("validate.confidence", _FRACTION, "Of the drop's paired interval."),
    Key("rollback", "a mapping", "What happens when a round fails.", None),
    Key(
        "rollback.retries",
        "an integer ≥ 0",
        "Attempts per round after the first, each with the step times `shrink`.",
    ),
    Key("rollback.shrink", _FRACTION, "The step's factor after a rollback."),
    Key("rollback.min_step", _FRACTION, "A step under this ends the run at the frontier."),
    Key(
        "rollback.recover_epochs",
        "an integer ≥ 0",
        "A failed attempt is first fine-tuned this much more (0: never).",
    ),
    Key(
        "rollback.grow_after",
        "an integer ≥ 0",
        "Accepted rounds in a row before the step grows (0: never).",
    ),
    Key("rollback.grow", "a number > 1", "The step's growth factor, never beyond `prune.step`."),
    Key(
        "checkpoints",
        "a mapping",
        "Which checkpoints are kept (operating: not part of the run's identity).",
        None,
    ),
    Key(
        "checkpoints.keep",
        "`last` or `all`",
        "last: the dense model and the newest accepted round; all: every accepted round.",
    ),
    Key(
        "lottery",
        "a mapping",
        "Lottery-ticket mode: after each prune, surviving weights are reset to the rewind point.",
        None,
    ),
    Key(
        "lottery.rewind",
        "`init`, `{epoch: K}` or `{step: K}`",
        "The rewind point: the initialisation, or after K epochs or steps of dense training.",
    ),
    Key("lottery.rewind.epoch", "an integer ≥ 1", "See `lottery.rewind`.", None),
    Key("lottery.rewind.step", "an integer ≥ 1", "See `lottery.rewind`.", None),
    Key(
        "lottery.control",
        "`random_reinit` or a mapping",
        "Also train each mask from a fresh random initialisation.",
        None,
    ),
    Key("lottery.control.kind", "`random_reinit`", "The control's kind.", None),
    Key(
        "lottery.control.seeds",
        "an integer ≥ 1",
        "Fresh initialisations per round; history keeps their mean and spread.",
        1,
    ),
    *OPERATING_KEYS,
)
