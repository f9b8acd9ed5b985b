"""The keys of the operating sections (``when``, ``checkpoints``, ``benchmark``, ``report``):
how a run is scheduled, kept and watched, not what it computes, so none is part of its identity.
Part of the table in ``keys.py``."""

from __future__ import annotations

from iterprune.schedule.key import Key

OPERATING_KEYS = (
    Key("when", "a mapping", "When rounds run (operating: not part of the run's identity).", None),
    Key(
        "when.window",
        "a 5-field cron expression",
        "Rounds run only in the minutes it matches (day of week: 0 or 7 is Sunday).",
    ),
    Key("when.timezone", "an IANA name, e.g. `Europe/Berlin`", "Of the window.", "UTC"),
    Key(
        "when.window_policy",
        "`finish` or `pause`",
        "A round running when the window closes: finish it, or pause it at once with a checkpoint.",
    ),
    Key(
        "when.pause_between_rounds",
        "a duration (`30s`, `10m`, `2h`)",
        "A pause after each round.",
        None,
    ),
    Key(
        "when.checkpoint_every",
        "a duration or a number of batches",
        "Mid-round checkpoints inside fine-tuning; unset: only when stopped or paused.",
        None,
    ),
    Key(
        "benchmark",
        "a mapping",
        "Inference latency after the baseline and every accepted round (operating).",
        None,
    ),
    Key("benchmark.batch_size", "an integer ≥ 1", "Batch of random input."),
    Key(
        "benchmark.input_shape",
        "a list of integers",
        "One example's shape, e.g. `[3, 224, 224]`; also the default of `export --input-shape`.",
    ),
    Key(
        "benchmark.iterations", "an integer ≥ 1", "Timed batches; p50 and p99 in ms go to history."
    ),
    Key("benchmark.warmup", "an integer ≥ 0", "Untimed batches first."),
    Key("report", "a mapping", "Where else a run reports (operating).", None),
    Key(
        "report.tensorboard",
        "a directory, relative to the schedule",
        "Scalars per round and per-layer sparsity histograms in `DIR/<run>` (extra `tensorboard`).",
    ),
    Key(
        "report.mlflow",
        "a mapping",
        "MLflow tracking: one MLflow run per run (extra `mlflow`).",
        None,
    ),
    Key("report.mlflow.tracking_uri", "a tracking URI", "Unset: `$MLFLOW_TRACKING_URI`."),
    Key("report.mlflow.experiment", "a name", "The MLflow experiment."),
)
