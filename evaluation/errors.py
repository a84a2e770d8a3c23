"""The evaluation's user errors: what the ``focused-attacks`` command prints as one line (exit code 2).

Every error the evaluation raises about the user's arguments, files or run folders is a :class:`UserError`;
the command line catches that family (and missing files), never a bare ``ValueError``, so that a bug still
shows its traceback. The subclasses that are also ``ValueError`` keep ``except ValueError`` working for
callers of the library functions.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (arguments, files, run folder), not a bug."""


class InputError(UserError, ValueError):
    """An argument or input file (image, label CSV, image folder, VOC folder) is invalid."""


class ConfigMismatchError(UserError, ValueError):
    """A run folder already holds a run made with different arguments or data."""


class RunFolderError(UserError, ValueError):
    """The run folder cannot be used as it is (a link or a non-regular file in it, not writable, ...)."""


class FolderInUseError(RunFolderError):
    """Another live process is writing into the run folder."""


class CLIError(UserError):
    """A command-line option is invalid (raised by :mod:`evaluation.cli`)."""
