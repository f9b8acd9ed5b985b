"""Pure algorithms: masks and pruning methods, channel removal, the round decision and the
statistics it rests on, random state, latency and sensitivity measurements.

Functions of tensors and values, no files and no database; ``decisions`` and ``evidence`` do not
even import torch, so every rule is a row in a table test.

May import: :mod:`iterprune.schedule` (the specs) and :mod:`iterprune.errors`.
"""
