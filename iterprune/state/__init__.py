"""What survives the process: the state directory's paths, the SQLite database (the only place
that speaks SQL, with its migrations), checkpoint files that survive crashes, a run's identity,
and the queue. Also the fault-injection points crash tests use.

May import: :mod:`iterprune.schedule` and :mod:`iterprune.errors` — not :mod:`iterprune.core`,
its sibling: the state knows nothing of how a model is pruned.
"""
