"""Exceptions the CLI turns into messages and exit codes (see README, "Exit codes")."""

from __future__ import annotations


class IterpruneError(Exception):
    """A failure iterprune can explain to its user; the CLI prints it without a traceback."""

    exit_code = 1


class UserError(IterpruneError):
    """Bad input: arguments, schedule, unknown run. Exit code 2."""

    exit_code = 2


class UnknownRun(UserError):
    """The state database has no run of that name."""


class RunConflict(UserError):
    """The run exists but cannot be started the way it was asked."""


class RunBusy(IterpruneError):
    """Another live process owns the run."""

    exit_code = 4


class PruneError(IterpruneError):
    """A prune did not reach the sparsity it was asked for."""
