"""Plots, TensorBoard logs and ONNX exports (the optional extras, installed with [test])."""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import torch
from helpers import SPARSE_RUN, checkpoint_state, tiny, write
from onnx import numpy_helper
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from iterprune.cli import table as cli
from iterprune.state.store import Store


def test_plot_writes_a_readable_png(tmp_path: Path, write_schedule) -> None:
    state = str(tmp_path / "s")
    assert cli.main(["start", str(write_schedule()), "--state-dir", state]) == 0
    out = tmp_path / "plot.png"
    assert cli.main(["plot", "tiny", "--out", str(out), "--state-dir", state]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 1000 and image.size[1] >= 400
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # drawn, not blank


def test_tensorboard_gets_scalars_and_layer_histograms(tmp_path: Path, write_schedule) -> None:
    path = write_schedule(tiny(report={"tensorboard": "tb"}, data={"test_fraction": 0.25}))
    assert cli.main(["start", str(path), "--state-dir", str(tmp_path / "s")]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tiny"))
    events.Reload()
    tags = events.Tags()
    scalars = {"round/sparsity", "round/val_accuracy", "round/drop", "round/loss"}
    scalars |= {"round/test_accuracy", "round/drop_low", "round/drop_high"}
    assert scalars <= set(tags["scalars"])
    assert "layer_sparsity" in tags["histograms"]
    sparsity = [e.value for e in events.Scalars("round/sparsity")]
    assert sparsity[0] == 0.0 and sparsity[-1] > 0.59


def test_onnx_export_carries_the_pruned_weights(tmp_path: Path) -> None:
    path = write(tmp_path / "sparse.yaml", SPARSE_RUN)
    state = tmp_path / "s"
    assert cli.main(["start", str(path), "--state-dir", str(state)]) == 0
    out = tmp_path / "m.onnx"
    assert (
        cli.main(
            ["export", "sparse", "--format", "onnx", "--out", str(out), "--state-dir", str(state)]
        )
        == 0
    )
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    last = Store(state).run("sparse")["accepted_round"]
    ckpt = checkpoint_state(state, "sparse", last)
    for name, keep in ckpt["mask"].items():
        assert torch.equal(weights[name], ckpt["model"][name] * keep), name


def test_runs_judged_by_a_lower_is_better_metric_rank_the_lower_first() -> None:
    from iterprune.report import views

    lower = {"name": "perplexity", "unit": "", "higher_is_better": False}
    common = {"test_accuracy": None, "epochs": 3, "duration_s": 1.0, "metric": lower}
    docs = [
        {"run": "worse", "sparsity": 0.5, "val_accuracy": 9.1, **common},
        {"run": "better", "sparsity": 0.5, "val_accuracy": 8.4, **common},
        {"run": "sparser", "sparsity": 0.6, "val_accuracy": 9.9, **common},
    ]
    assert [d["run"] for d in views.ranked(docs)] == ["sparser", "better", "worse"]
    docs = [{**d, "metric": None} for d in docs]  # accuracy, as every earlier run: higher first
    assert [d["run"] for d in views.ranked(docs)] == ["sparser", "worse", "better"]


def test_a_ranking_never_chooses_by_the_test_split() -> None:
    """Picking a sweep's best run by its test metric would leave no data outside the choice."""
    from iterprune.report import views

    common = {"sparsity": 0.5, "epochs": 3, "duration_s": 1.0, "metric": None}
    docs = [
        {"run": "lucky on test", "val_accuracy": 97.0, "test_accuracy": 99.0, **common},
        {"run": "best on validation", "val_accuracy": 98.0, "test_accuracy": 96.0, **common},
    ]
    assert [d["run"] for d in views.ranked(docs)] == ["best on validation", "lucky on test"]


def test_runs_judged_by_different_metrics_are_ranked_without_comparing_them() -> None:
    from iterprune.report import console, views

    lower = {"name": "perplexity", "unit": "", "higher_is_better": False}
    common = {"test_accuracy": None, "duration_s": 1.0, "status": "finished"}
    docs = [
        {"run": "cnn", "sparsity": 0.5, "val_accuracy": 99.4, "epochs": 9, **common},
        {"run": "lm", "sparsity": 0.5, "val_accuracy": 8.5, "epochs": 4, "metric": lower, **common},
        {"run": "sparse", "sparsity": 0.6, "val_accuracy": 98.0, "epochs": 20, **common},
    ]
    ranked = views.ranked(docs)  # 99.4% is not "worse" than 8.5 ppl: fewer epochs decide
    assert [d["run"] for d in ranked] == ["sparse", "lm", "cnn"]
    out = io.StringIO()
    console.make_console(file=out, width=100, color_system=None).print(
        console.ranking_table(ranked)
    )
    assert "99.40%" in out.getvalue() and "8.50 ppl" in out.getvalue()
    assert "(metrics differ)" in out.getvalue()


def test_the_plots_test_line_starts_at_the_dense_models_test_metric() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iterprune.report import plots

    history = {
        "run": "lm",
        "baseline_accuracy": 14.1,
        "baseline_test_accuracy": 11.8,
        "metric": {"name": "perplexity", "unit": "", "higher_is_better": False},
        "rounds": [
            {
                "status": "accepted",
                "sparsity": 0.4,
                "val_accuracy": 13.3,
                "test_accuracy": 11.0,
                "drop": -0.8,
                "drop_low": -0.9,
                "drop_high": -0.7,
            },
        ],
    }
    fig, ax = plt.subplots()
    plots._accuracy(ax, history, 0.7)
    tested = [line for line in ax.get_lines() if "test split" in str(line.get_label())]
    assert len(tested) == 1
    assert list(tested[0].get_xdata()) == [0.0, 40.0]
    assert list(tested[0].get_ydata()) == [11.8, 11.0]
    plt.close(fig)


def test_an_accuracys_error_bar_stays_within_100_percent() -> None:
    """The drop's interval is drawn about the round's accuracy; near 100% its far end would
    claim an accuracy no model has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iterprune.report import plots

    round_ = {"status": "accepted", "sparsity": 0.9, "val_accuracy": 100.0, "drop": -0.28}
    history = {
        "run": "digits",
        "baseline_accuracy": 99.72,
        "rounds": [{**round_, "drop_low": -1.56, "drop_high": 0.80}],
    }
    fig, ax = plt.subplots()
    plots._accuracy(ax, history, 0.5)
    tops = [y for c in ax.collections for seg in c.get_segments() for _, y in seg]
    assert tops and max(tops) == 100.0 and min(tops) == 99.72 - 0.80
    plt.close(fig)
