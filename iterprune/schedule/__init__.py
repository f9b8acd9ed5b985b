"""The schedule: what a run is asked to do, read from YAML into frozen dataclasses.

Owns the specs (``specs``), the YAML reader with line numbers (``checker``), the rules of each
section (``inputs``, ``rounds``, ``operating``), loading and comparing whole schedules
(``parsing``), sweeps, the cron window and the import of factories named by reference.

May import: :mod:`iterprune.errors` only. Everything else builds on it.
"""
