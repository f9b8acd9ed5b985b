"""Make the documentation's pictures from a real run of the example (run from the repository
root, with the examples and plot extras installed):

    python docs/pictures.py

It runs ``schedules/digits.yaml`` in a fresh state directory with the live dashboard, saves the
dashboard's last frame as docs/images/console.svg (Rich's own SVG export) and draws the run's
plot into docs/images/digits.png. Commit both; the site build only reads them."""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from iterprune.cli import main
from iterprune.report.console import reporters

IMAGES = Path(__file__).parent / "images"
WIDTH = 100


def record_dashboard() -> list[reporters.LiveReporter]:
    """Serve the run with a terminal's live dashboard (drawn into a buffer) and keep it."""
    kept: list[reporters.LiveReporter] = []
    screen = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=WIDTH)

    def live(console: Console) -> reporters.LiveReporter:
        kept.append(reporters.LiveReporter(screen))
        return kept[-1]

    reporters.reporter_for = live  # launch asks for a reporter through the console package
    import iterprune.report.console as console_package

    console_package.reporter_for = live
    return kept


def main_() -> int:
    IMAGES.mkdir(exist_ok=True)
    state = Path(tempfile.mkdtemp()) / "state"
    kept = record_dashboard()
    code = main(["start", "schedules/digits.yaml", "--state-dir", str(state)])
    if code != 0 or not kept:
        return code or 1
    frame = Console(record=True, file=io.StringIO(), width=WIDTH, force_terminal=True)
    frame.print(kept[-1].view)
    frame.save_svg(str(IMAGES / "console.svg"), title="iterprune start schedules/digits.yaml")
    code = main(
        ["plot", "digits-cnn", "--state-dir", str(state), "--out", str(IMAGES / "digits.png")]
    )
    print(f"wrote {IMAGES / 'console.svg'} and {IMAGES / 'digits.png'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main_())
