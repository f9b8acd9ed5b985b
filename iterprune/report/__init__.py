"""What a run shows and gives back: the ``--json`` documents (``views``), the Rich console,
plots, TensorBoard and MLflow, exports of a round's model, and the subject of ``analyze``.

May import: :mod:`iterprune.engine` and every layer below it. The read side (``views`` and the
console's tables) imports no torch, so ``status`` and ``history`` answer at once.
"""
