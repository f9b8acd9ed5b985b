"""The ``iterprune`` command line: the table of commands (``table``), what each command does
(``commands``, ``queue``), errors turned into messages and exit codes.

May import: :mod:`iterprune.api` and every layer below it. The entry point is :func:`main`.
"""

from iterprune.cli.table import main

__all__ = ["main"]
