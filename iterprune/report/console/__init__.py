"""Everything the user sees in a terminal: the live dashboard, plain log lines, and tables.

This package is the only place that imports Rich: ``reporters`` (what a served run shows),
``tables`` (the inspection commands' views) and ``overview`` (many runs at once); ``numbers``
says how every number is written in them.
"""

from iterprune.report.console.overview import (
    compare_table,
    device_label,
    queue_table,
    ranking_table,
    serve_text,
    settings_table,
)
from iterprune.report.console.reporters import (
    LiveReporter,
    PlainReporter,
    emit,
    make_console,
    progress_bar,
    reporter_for,
    say,
)
from iterprune.report.console.tables import (
    analysis_view,
    history_view,
    layers_table,
    rounds_table,
    runs_table,
    sensitivity_table,
    sparkline,
    status_table,
    status_view,
)

__all__ = [
    "LiveReporter",
    "PlainReporter",
    "analysis_view",
    "emit",
    "compare_table",
    "device_label",
    "history_view",
    "layers_table",
    "queue_table",
    "ranking_table",
    "make_console",
    "progress_bar",
    "reporter_for",
    "rounds_table",
    "runs_table",
    "settings_table",
    "sensitivity_table",
    "serve_text",
    "say",
    "sparkline",
    "status_table",
    "status_view",
]
