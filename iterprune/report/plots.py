"""``iterprune plot``: accuracy against sparsity for every attempt, and per-layer sparsity.

matplotlib is an optional extra (``pip install 'iterprune[plot]'``), imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iterprune.errors import OutputWriteError, UserError
from iterprune.state import diagnosis, faults


def _save(plt: Any, fig: Any, out: Path) -> None:
    """Write the figure beside ``out`` and rename it into place: a full disk leaves no half image
    (and an older one intact), and says so."""
    part = out.with_name(f".{out.name}.{os.getpid()}.partial{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(part, dpi=110)
        faults.point("export_write")
        os.replace(part, out)
    except OSError as exc:
        part.unlink(missing_ok=True)
        why = diagnosis.cause(exc, out)
        raise OutputWriteError(f"could not write {out}: {why}; nothing was written") from None
    finally:
        plt.close(fig)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'iterprune[plot]'") from None
    return plt


def plot(history: dict[str, Any], layers: dict[str, Any], max_drop: float, out: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    _accuracy(left, history, max_drop)
    _layers(right, layers)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(plt, fig, out)


def _accuracy(ax: Any, history: dict[str, Any], max_drop: float) -> None:
    """Accuracy against sparsity: every attempt with the interval of its drop as an error bar
    (accepted and rolled back), the test split's accuracy of the accepted rounds, controls, the
    dense baseline and the budget."""
    rounds, base = history["rounds"], history["baseline_accuracy"]
    accepted = [r for r in rounds if r["status"] == "accepted"]
    rejected = [r for r in rounds if r["status"] == "rolled_back"]
    ax.plot(
        [0.0] + [100 * r["sparsity"] for r in accepted],
        [base] + [r["val_accuracy"] for r in accepted],
        "-",
        color="tab:blue",
        lw=1,
    )
    metric = history.get("metric") or {"name": "accuracy", "higher_is_better": True}
    higher, name = metric["higher_is_better"], metric["name"]
    percent = name == "accuracy"
    _attempts(ax, accepted, base, "o", "tab:blue", "accepted round (validation)", higher, percent)
    _attempts(ax, rejected, base, "x", "tab:red", "rolled back", higher, percent)
    tested = [r for r in accepted if r.get("test_accuracy") is not None]
    if tested:
        xs = [100 * r["sparsity"] for r in tested]
        ys = [r["test_accuracy"] for r in tested]
        if history.get("baseline_test_accuracy") is not None:  # from the dense model, as above
            xs, ys = [0.0, *xs], [history["baseline_test_accuracy"], *ys]
        ax.plot(
            xs,
            ys,
            "s--",
            color="tab:purple",
            ms=4,
            label="accepted round (test split, never decides)",
        )
    controls = [r for r in accepted if r.get("control_accuracy") is not None]
    if controls:
        xs, ys = [100 * r["sparsity"] for r in controls], [r["control_accuracy"] for r in controls]
        spread = [r.get("control_std") or 0.0 for r in controls]
        n = max(r.get("control_n") or 1 for r in controls)
        label = "control (random reinit)" + (f", mean ± sd of {n} seeds" if n > 1 else "")
        ax.errorbar(xs, ys, yerr=spread, fmt="^--", color="tab:gray", capsize=2, label=label)
    unit = "%" if percent else ""
    ax.axhline(base, color="tab:green", lw=1, label=f"dense baseline {base:.2f}{unit}")
    if higher:
        budget, limit = f"budget: baseline − {max_drop:.3g} points", base - max_drop
    else:
        budget, limit = f"budget: baseline + {max_drop:.3g}", base + max_drop
    ax.axhline(limit, color="tab:orange", ls="--", lw=1, label=budget)
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel("accuracy (%)" if name == "accuracy" else f"{name} (lower is better)")
    confidence = history.get("confidence") or 0.95
    ax.set_title(f"{history['run']}: every attempt, with the {confidence:.0%} interval of its drop")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")


def _attempts(
    ax: Any,
    rows: list[dict],
    base: float,
    marker: str,
    colour: str,
    label: str,
    higher: bool = True,
    percent: bool = False,
) -> None:
    if not rows:
        return
    xs = [100 * r["sparsity"] for r in rows]
    ys = [r["val_accuracy"] for r in rows]
    with_bars = [r for r in rows if r.get("drop_low") is not None]
    if with_bars:  # the drop's interval on the metric's scale (worse: lower accuracy, higher ppl)
        ends = [(base - r["drop_high"], base - r["drop_low"]) for r in with_bars]
        if higher is False:
            ends = [(base + r["drop_low"], base + r["drop_high"]) for r in with_bars]
        elif percent:  # an accuracy cannot leave 0-100%, whatever the drop's interval says
            ends = [(max(low, 0.0), min(high, 100.0)) for low, high in ends]
        below = [r["val_accuracy"] - low for r, (low, _) in zip(with_bars, ends, strict=True)]
        above = [high - r["val_accuracy"] for r, (_, high) in zip(with_bars, ends, strict=True)]
        ax.errorbar(
            [100 * r["sparsity"] for r in with_bars],
            [r["val_accuracy"] for r in with_bars],
            yerr=[below, above],
            fmt="none",
            ecolor=colour,
            alpha=0.5,
            capsize=2,
        )
    ax.plot(xs, ys, marker, color=colour, markersize=7 if marker == "x" else 5, label=label)


def _layers(ax: Any, layers: dict[str, Any]) -> None:
    names = [f"{x['layer']} ({x['params']:,})" for x in layers["layers"]]
    values = [100 * x["sparsity"] for x in layers["layers"]]
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) < 40 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (%)")
    ax.set_title(f"per-layer sparsity, round {layers['round']}")
    ax.grid(axis="x", alpha=0.3)


def sensitivity_heatmap(doc: dict[str, Any], out: Path) -> None:
    """The sensitivity table as a heatmap: accuracy drop per layer and level, the colour scale
    centred on the budget."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    names = [f"{r['layer']} ({r['params']:,})" for r in doc["layers"]]
    drops = [r["drop"] for r in doc["layers"]]
    budget = doc["max_drop"]
    top = max([budget * 2, *(d for row in drops for d in row)])
    low = min([0.0, *(d for row in drops for d in row)]) - 1e-6
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(doc["levels"]), 1.5 + 0.28 * len(names)))
    norm = TwoSlopeNorm(vmin=min(low, budget - 1e-6), vcenter=budget, vmax=top)
    image = ax.imshow(drops, cmap="RdYlGn_r", norm=norm, aspect="auto")
    ax.set_xticks(range(len(doc["levels"])), [f"{x:.0%}" for x in doc["levels"]])
    ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) < 40 else 5)
    if len(names) <= 40:
        for i, row in enumerate(drops):
            for j, d in enumerate(row):
                ax.text(j, i, f"{d:.1f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("sparsity of the layer alone")
    name = (doc.get("metric") or {}).get("name", "accuracy")
    units = "points" if name == "accuracy" else "positive: worse"
    ax.set_title(f"{doc['model']}: {name} drop ({units}), budget {budget:.3g}")
    fig.colorbar(image, ax=ax, label=f"{name} drop ({units})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(plt, fig, out)
