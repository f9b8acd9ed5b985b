from __future__ import annotations

import io

from iterprune.report import console
from iterprune.report.console import numbers, overview

ROWS = [
    {
        "round": 1,
        "attempt": 1,
        "status": "accepted",
        "step": 0.2,
        "target_sparsity": 0.2,
        "sparsity": 0.2,
        "params": 800,
        "val_accuracy": 98.5,
        "drop": 0.5,
        "duration_s": 1.2,
    },
    {
        "round": 2,
        "attempt": 1,
        "status": "rolled_back",
        "step": 0.2,
        "target_sparsity": 0.36,
        "sparsity": 0.36,
        "params": 640,
        "val_accuracy": 96.0,
        "drop": 3.0,
        "duration_s": 1.1,
    },
]


def render(renderable, width: int = 80) -> str:
    con = console.make_console(file=io.StringIO(), width=width, color_system=None)
    con.print(renderable)
    return con.file.getvalue()


def test_rounds_table_fits_80_columns_without_truncation() -> None:
    text = render(console.rounds_table(ROWS))
    assert "rolled back" in text and "accepted" in text and "…" not in text
    assert "36.00%" in text and "+3.00" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_plain_reporter_prints_one_timestamped_line_per_event() -> None:
    con = console.make_console(file=io.StringIO(), width=200, color_system=None)
    rep = console.reporter_for(con)
    assert isinstance(rep, console.PlainReporter)  # a StringIO is no terminal
    rep.round_done(ROWS[1])
    rep.event("warning", "checkpoint", "disk almost full")
    rep.run_done("finished", "target sparsity 90% reached")
    lines = con.file.getvalue().splitlines()
    assert len(lines) == 3
    assert "round 2.1 rolled back" in lines[0] and "drop +3.00" in lines[0]
    assert lines[1].endswith("WARNING: disk almost full")
    assert lines[0][:4].isdigit()


def test_live_reporter_draws_header_rounds_and_progress() -> None:
    con = console.make_console(
        file=io.StringIO(), width=100, color_system=None, force_terminal=True
    )
    with console.LiveReporter(con) as rep:
        rep.run_started(
            {
                "run": "r1",
                "model": "digits_cnn",
                "baseline_accuracy": 99.0,
                "target_sparsity": 0.9,
                "max_drop": 1.0,
                "method": "global_magnitude",
                "params": 1000,
                "device": "cpu",
            }
        )
        rep.phase("finetune", 2, "round 1.1: fine-tuning")
        rep.advance(1.0)
        rep.round_done(ROWS[0])
    out = con.file.getvalue()
    assert "r1" in out and "99.00%" in out and "fine-tuning" in out and "accepted" in out


def test_history_view_and_layers_table_render() -> None:
    doc = {
        "run": "r",
        "status": "finished",
        "baseline_accuracy": 99.0,
        "baseline_params": 1000,
        "rounds": ROWS,
        "reason": "target sparsity 90% reached",
    }
    assert "target sparsity 90% reached" in render(console.history_view(doc))
    layers = {
        "run": "r",
        "round": 2,
        "layers": [{"layer": "conv1", "params": 100, "nonzero": 10, "sparsity": 0.9}],
    }
    assert "90.00%" in render(console.layers_table(layers))


def test_rounds_with_intervals_and_a_test_split_fit_80_columns() -> None:
    rows = [
        {**ROWS[0], "drop_low": -1.18, "drop_high": 1.18, "test_accuracy": 98.89, "recovered": 1},
        {**ROWS[1], "drop_low": 1.69, "drop_high": 4.1, "test_accuracy": None, "duration_s": 10.5},
    ]
    text = render(console.rounds_table(rows))
    assert "[-1.2, +1.2]" in text and "98.89" in text and "test %" in text and "↻" in text
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80


def test_a_narrow_interval_keeps_the_decimals_that_tell_its_ends_apart() -> None:
    # a perplexity's drop interval is a few hundredths wide; one decimal showed [-0.3, -0.3]
    rows = [{**ROWS[0], "drop_low": -0.34, "drop_high": -0.27, "test_accuracy": 4.12}]
    text = render(console.rounds_table(rows))
    assert "[-0.34, -0.27]" in text and "[-0.3, -0.3]" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert numbers.interval(-1.18, 1.18) == "[-1.2, +1.2]"  # accuracy points: as before
    assert numbers.interval(0.0010, 0.0012) == "[+0.0010, +0.0012]"
    assert numbers.interval(0.5, 0.5) == "[+0.5, +0.5]"
    assert numbers.interval(None, 1.0) == "—"


def test_the_interval_column_has_one_number_of_decimals() -> None:
    """A wide interval beside narrow ones read ``[-0.03, +0.02]`` under ``[-0.019, +0.020]``."""
    narrow = {**ROWS[0], "drop_low": -0.019, "drop_high": 0.020}
    wide = {**ROWS[0], "drop_low": -0.046, "drop_high": 0.115}
    text = render(console.rounds_table([narrow, wide], d=3))
    assert "[-0.019, +0.020]" in text and "[-0.046, +0.115]" in text


def test_runs_judged_by_different_metrics_are_compared_each_in_its_own_units() -> None:
    def run(name: str, metric: str | None, base: float, final: float) -> dict:
        return {
            "run": name,
            "status": "finished",
            "model": "m",
            "baseline_accuracy": base,
            "sparsity": 0.6,
            "val_accuracy": final,
            "control_accuracy": None,
            "params": 10,
            "latency_ms_p50": None,
            "accepted_rounds": 4,
            "attempts": 4,
            "rolled_back": 0,
            "duration_s": 40.0,
            "reason": "target reached",
            **({"metric": {"name": metric}} if metric else {}),
        }

    both = render(
        overview.compare_table([run("cnn", None, 99.72, 99.44), run("lm", "perplexity", 8.63, 8.5)])
    )
    assert "baseline metric" in both and "99.72%" in both and "8.63 ppl" in both
    assert "8.50 ppl" in both and "99.44%" in both
    same = render(
        overview.compare_table(
            [run("a", "perplexity", 8.63, 8.5), run("b", "perplexity", 8.6, 8.4)]
        )
    )
    assert (
        "baseline perplexity" in same
        and "8.63" in same
        and "ppl" not in same.replace("perplexity", "")
    )
    # each run with the decimals its budget needs: two MSE runs with a budget of 0.048 read
    # "0.48" and "0.48" for 0.482 and 0.479
    mse = [{**run(n, "mse", 0.482, v), "max_drop": 0.0482} for n, v in (("a", 0.479), ("b", 0.5))]
    text = render(overview.compare_table(mse))
    assert "0.482" in text and "0.479" in text and "0.500" in text
