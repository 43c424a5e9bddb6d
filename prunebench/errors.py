"""The errors a user meets: each ends as one line and exit status 2 in the CLI, never as a traceback.

They live here, below every other module, so that any layer can raise them without importing the layer
that reports them (the CLI's command group catches `UserError`)."""

from __future__ import annotations


class UserError(RuntimeError):
    """Base of the errors the CLI reports as one line: the user's files, setup or installed extras."""


class MissingExtraError(UserError):
    """An optional dependency is not installed; the message says which command installs it."""


class DataUnavailableError(UserError):
    """A dataset is neither cached nor fetchable; the message says what to do."""


class UnverifiedDataError(DataUnavailableError):
    """A dataset is present but does not verify; `--allow-unverified-data` accepts it."""


class StoreError(UserError):
    """The file given as a store is not one this prunebench can read (not SQLite, or a newer schema)."""


class CheckpointError(UserError):
    """A checkpoint file exists but cannot be read (truncated, overwritten, not a checkpoint)."""
