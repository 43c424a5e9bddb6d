"""The errors a user meets: each ends as one line and exit status 2 in the CLI, never as a traceback.

They live here, below every other module, so that any layer can raise them without importing the layer
that reports them (the CLI's command group catches `UserError`)."""

from __future__ import annotations

import errno
import resource
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def describe(exc: BaseException) -> str:
    """'TypeName: first line of the message' (the type alone when there is no message): an exception in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class UserError(RuntimeError):
    """Base of the errors the CLI reports as one line: the user's files, setup or installed extras."""


class MissingExtraError(UserError):
    """An optional dependency is not installed; the message says which command installs it."""


class DataUnavailableError(UserError):
    """A dataset is neither cached nor fetchable; the message says what to do."""


class UnreadableDataError(DataUnavailableError):
    """A data file that cannot be read (truncated, malformed, an unreadable image); the message names it."""

    @classmethod
    def from_worker(cls, exc: BaseException) -> UnreadableDataError:
        """The error as raised in a DataLoader worker, whose message torch wraps in the worker's traceback."""
        lines = str(exc).strip().splitlines()
        prefix = f"{cls.__module__}.{cls.__qualname__}: "
        own = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
        return cls(own[-1] if own else lines[-1] if lines else type(exc).__name__)


class UnverifiedDataError(DataUnavailableError):
    """A dataset is present but does not verify; `--allow-unverified-data` accepts it."""


class StoreError(UserError):
    """The file given as a store is not one this prunebench can read (not SQLite, or a newer schema)."""


class CheckpointError(UserError):
    """A checkpoint file exists but cannot be read (truncated, overwritten, not a checkpoint)."""


class DiskFullError(UserError):
    """A write found no space (a full disk, a quota, the file-size limit); what was written before is intact."""


#: errno values that mean "no room to write": no space, disk quota exceeded, file too large (RLIMIT_FSIZE).
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) is a write that found no room: an OSError of ENOSPC,
    EDQUOT or EFBIG, or SQLite's 'database or disk is full'."""
    for link in _chain(exc):
        if isinstance(link, DiskFullError) or (isinstance(link, OSError) and link.errno in _NO_ROOM):
            return True
        if isinstance(link, sqlite3.DatabaseError) and "disk is full" in str(link):
            return True
        if "No space left on device" in str(link) or "File too large" in str(link):  # Rust's io::Error (safetensors)
            return True
    return False


def _chain(exc: BaseException | None, longest: int = 8) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or during (its cause, else its context), up to `longest`."""
    for _ in range(longest):
        if exc is None:
            return
        yield exc
        exc = exc.__cause__ or exc.__context__


def free_space(path: Path | str) -> str:
    """The space left on the filesystem holding `path` (or its nearest existing parent), e.g. '12 kB'."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return _size(shutil.disk_usage(where).free)
    except OSError:
        return "unknown space"


def _size(count: int) -> str:
    """1234 -> '1.2 kB' (decimal units, as df -H and file managers show them)."""
    size = float(count)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


#: What a user does about a full disk, unless the caller knows better.
AGAIN = "free some space and run the same command again"


def disk_full(path: Path | str, what: str, then: str = AGAIN, needed: int | None = None,
              cause: BaseException | None = None) -> DiskFullError:
    """The one-line error for a write of `what` (e.g. 'the result store') at `path` that found no room;
    `needed`: the bytes the write needed, when known; `cause`: the failed write (EFBIG names the limit)."""
    need = f"needs {_size(needed)}, " if needed is not None else ""
    room = f"{free_space(path)} free there"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if _errno_in_chain(cause) == errno.EFBIG and limit != resource.RLIM_INFINITY:
        room = f"larger than this process's file-size limit of {_size(limit)}, `ulimit -f`"
        then = then.replace("free some space", "raise the limit")
    return DiskFullError(f"no space left to write {what} {path} ({need}{room}): {then}")


def _errno_in_chain(exc: BaseException | None) -> int | None:
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno is not None:
            return link.errno
        if "File too large" in str(link):
            return errno.EFBIG
    return None


@contextmanager
def room_for(path: Path | str, what: str, then: str = AGAIN) -> Iterator[None]:
    """Within the block, a write that finds no room raises `disk_full(path, what, then)` instead (one line)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(path, what, then, cause=exc) from exc
        raise
