"""Running a run: building the model and data, training and evaluation, one attempt
(prune -> fine-tune -> measure), the dense baseline, resumption, and the runner that decides,
commits and repeats; under torchrun, the orders rank 0 sends the other ranks.

May import: :mod:`iterprune.core`, :mod:`iterprune.state`, :mod:`iterprune.schedule`,
:mod:`iterprune.errors`. Only the runner (and :mod:`iterprune.state`) changes a run's status.
"""
