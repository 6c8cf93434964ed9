"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file the program writes goes through `atomic_write`: write a temporary file in the same
folder, flush it to disk, then `os.replace` it over the target (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write `path` atomically with `write(file_object)`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files that a killed process left behind; returns how many."""
    removed = 0
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


def describe_write_error(err: BaseException) -> str:
    """A short reason for a failed write; torch.save reports a full disk as a RuntimeError with no errno."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    if "file write failed" in text or "unexpected pos" in text or "No space" in text:
        return f"{os.strerror(errno.ENOSPC)} (or another write failure: {text.splitlines()[0][:120]})"
    return text.splitlines()[0][:160] if text else type(err).__name__


class RunLock:
    """An OS lock on a run directory: one live process writes it at a time.

    `fcntl.flock` on `<run>/.lock`: the kernel releases it when the process ends, however it ends
    (kill -9 included), so nothing stale is left behind.
    """

    NAME = ".lock"

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self._fh: io.TextIOWrapper | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fh = open(self.path, "a+")  # noqa: SIM115 (stays open: the lock lives as long as the file is open)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ValueError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish, or pass another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None
