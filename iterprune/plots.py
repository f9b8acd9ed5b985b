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
    rounds = history["rounds"]
    base = history["baseline_accuracy"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})

    accepted = [r for r in rounds if r["status"] == "accepted"]
    rejected = [r for r in rounds if r["status"] == "rolled_back"]
    xs = [0.0] + [100 * r["sparsity"] for r in accepted]
    left.plot(
        xs,
        [base] + [r["val_accuracy"] for r in accepted],
        "o-",
        color="tab:blue",
        label="accepted round",
    )
    if rejected:
        left.plot(
            [100 * r["sparsity"] for r in rejected],
            [r["val_accuracy"] for r in rejected],
            "x",
            color="tab:red",
            markersize=9,
            mew=2,
            label="rolled back",
        )
    controls = [r for r in accepted if r.get("control_accuracy") is not None]
    if controls:
        left.plot(
            [100 * r["sparsity"] for r in controls],
            [r["control_accuracy"] for r in controls],
            "^--",
            color="tab:gray",
            label="control (random reinit)",
        )
    left.axhline(base, color="tab:green", lw=1, label=f"dense baseline {base:.2f}%")
    left.axhline(
        base - max_drop,
        color="tab:orange",
        ls="--",
        lw=1,
        label=f"budget: baseline − {max_drop:g} points",
    )
    left.set_xlabel("sparsity of prunable weights (%)")
    left.set_ylabel("validation accuracy (%)")
    left.set_title(f"{history['run']}: accuracy vs sparsity, every attempt")
    left.grid(alpha=0.3)
    left.legend(loc="best")

    names = [f"{x['layer']} ({x['params']:,})" for x in layers["layers"]]
    values = [100 * x["sparsity"] for x in layers["layers"]]
    right.barh(range(len(names)), values, color="tab:blue")
    right.set_yticks(range(len(names)), names, fontsize=8 if len(names) < 40 else 5)
    right.invert_yaxis()
    right.set_xlim(0, 100)
    right.set_xlabel("sparsity (%)")
    right.set_title(f"per-layer sparsity, round {layers['round']}")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
