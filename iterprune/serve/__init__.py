"""Serving runs over time: the APScheduler daemon (round job, heartbeat, signals, window),
starting a run in the foreground, detached or under torchrun, and ``iterprune serve``'s queue
loop with its per-device workers.

May import: :mod:`iterprune.report` and every layer below it.
"""
