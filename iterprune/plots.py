"""``iterprune plot``: accuracy against sparsity for every attempt, and per-layer sparsity.

matplotlib is an optional extra (``pip install 'iterprune[plot]'``), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iterprune.errors import UserError


def plot(history: dict[str, Any], layers: dict[str, Any], max_drop: float, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("iterprune plot needs matplotlib: pip install 'iterprune[plot]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    _accuracy(left, history, max_drop)
    _layers(right, layers)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _accuracy(ax: Any, history: dict[str, Any], max_drop: float) -> None:
    """Accuracy against sparsity: accepted rounds, rolled-back attempts, controls, the budget."""
    rounds, base = history["rounds"], history["baseline_accuracy"]
    accepted = [r for r in rounds if r["status"] == "accepted"]
    rejected = [r for r in rounds if r["status"] == "rolled_back"]
    xs = [0.0] + [100 * r["sparsity"] for r in accepted]
    ys = [base] + [r["val_accuracy"] for r in accepted]
    ax.plot(xs, ys, "o-", color="tab:blue", label="accepted round")
    if rejected:
        xs, ys = [100 * r["sparsity"] for r in rejected], [r["val_accuracy"] for r in rejected]
        ax.plot(xs, ys, "x", color="tab:red", markersize=9, mew=2, label="rolled back")
    controls = [r for r in accepted if r.get("control_accuracy") is not None]
    if controls:
        xs, ys = [100 * r["sparsity"] for r in controls], [r["control_accuracy"] for r in controls]
        ax.plot(xs, ys, "^--", color="tab:gray", label="control (random reinit)")
    ax.axhline(base, color="tab:green", lw=1, label=f"dense baseline {base:.2f}%")
    budget = f"budget: baseline − {max_drop:g} points"
    ax.axhline(base - max_drop, color="tab:orange", ls="--", lw=1, label=budget)
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{history['run']}: accuracy vs sparsity, every attempt")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")


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
