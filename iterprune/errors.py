"""Every exception iterprune raises on purpose, and every exit code (see docs/commands.md, "Exit codes").

The CLI is the only place these become messages and exit codes; everything below it raises them.
"""

from __future__ import annotations

EXIT_OK = 0  # done: the run finished, or the command succeeded
EXIT_FAILED = 1  # the run failed; the error is in `status` and `logs`
EXIT_INVALID = 2  # bad arguments, invalid schedule, unknown run, changed schedule
EXIT_STOPPED = 3  # stopped by SIGTERM, Ctrl-C or `iterprune stop`; `resume` continues it
EXIT_BUSY = 4  # another live process is serving the run
EXIT_DAMAGED = 5  # damaged state: no checkpoint verifies, not a database, `check` found a problem
EXIT_SECOND_CTRL_C = 130  # a second Ctrl-C: exited at once


class IterpruneError(Exception):
    """A failure iterprune can explain to its user; the CLI prints it without a traceback."""

    exit_code = EXIT_FAILED


class UserError(IterpruneError):
    """Bad input: arguments, schedule, unknown run."""

    exit_code = EXIT_INVALID


class ScheduleError(UserError):
    """The schedule has one or more problems; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}\n{lines}")


class UnknownRun(UserError):
    """The state database has no run of that name."""


class RunConflict(UserError):
    """The run exists but cannot be started the way it was asked."""


class RunBusy(IterpruneError):
    """Another live process owns the run."""

    exit_code = EXIT_BUSY


class PruneError(IterpruneError):
    """A prune did not reach the sparsity it was asked for."""


class StateWriteError(IterpruneError):
    """The state database could not be written (disk full, read-only, gone); nothing was kept."""


class CheckpointWriteError(IterpruneError):
    """A checkpoint could not be written (disk full, permissions, I/O error)."""


class OutputWriteError(IterpruneError):
    """A file the user asked for (an export, a plot, a backup) could not be written."""


class StateDamaged(IterpruneError):
    """The state database is not one iterprune can read (not a database at all)."""

    exit_code = EXIT_DAMAGED


class CheckpointCorrupt(IterpruneError):
    """A checkpoint file is missing, truncated or does not match its recorded sha256."""

    exit_code = EXIT_DAMAGED


class PeerLost(IterpruneError):
    """A collective operation failed: another rank exited, crashed or became unreachable."""


class RanksDisagree(IterpruneError):
    """After an attempt, some rank holds different weights or masks than rank 0."""
