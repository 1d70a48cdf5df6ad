"""The run folder of ``sacseg train``: one writer at a time, no run replaced unasked, no stale temporary files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from sacseg.utils.io import stale_temp_files

__all__ = ["LOCK_FILE", "RUN_FILES", "check_run_folder", "clear_run", "locked_run_folder", "remove_stale_temp_files"]

# What ``sacseg train`` writes into its folder; any of them means the folder holds a run.
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "git_revision.txt", "train.log", "tb")
# Files written through ``atomic_open``, whose temporary files a killed run can leave behind.
_ATOMIC_FILES = ("last.pt", "best.pt", "config.yaml", "git_revision.txt")
LOCK_FILE = ".lock"


def _existing_run_files(folder: Path) -> list[str]:
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_run_folder(folder: Path, continues: bool, overwrite: bool) -> None:
    """Raise ValueError unless ``folder`` may receive a run; writes nothing.

    ``folder`` must be a folder or not exist. If it already holds a run (any of ``RUN_FILES``),
    the new run must continue it (``continues``: ``--resume auto`` or a checkpoint inside it) or
    replace it (``overwrite``).
    """
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} is a file, not a folder")
    existing = _existing_run_files(folder) if folder.is_dir() else []
    if existing and not (continues or overwrite):
        raise ValueError(
            f"{folder} already holds a run ({', '.join(existing)}): continue it with --resume auto, "
            "replace it with --overwrite, or choose another --out"
        )


@contextlib.contextmanager
def locked_run_folder(folder: Path) -> Iterator[None]:
    """Create ``folder`` if needed and hold an exclusive lock on it while the block runs.

    The lock is ``flock`` on ``folder/.lock``, which holds the holder's pid and host. The kernel
    releases it when the process ends in any way (``kill -9`` included), so a dead run never
    blocks the next one. A folder locked by a live process is a ValueError naming that process;
    a folder that cannot be created or written is an OSError naming it.
    """
    lock_path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OSError(f"cannot write to run folder {folder}: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", errors="replace").strip()
            raise ValueError(
                f"run folder {folder} is in use by {holder or 'another process'} (lock file {lock_path}); "
                "wait for that run to end or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def clear_run(folder: Path) -> list[str]:
    """Delete the run files of ``folder`` (checkpoints, config, log, TensorBoard events); return their names.

    Only for ``--overwrite``, with the folder's lock held.
    """
    removed = _existing_run_files(folder)
    for name in removed:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def remove_stale_temp_files(folder: Path) -> int:
    """Delete the temporary files of checkpoints (and config) that a killed run left in ``folder``.

    Only with the folder's lock held: then no live run can be writing them. Returns the bytes freed.
    """
    freed = 0
    for name in _ATOMIC_FILES:
        for path in stale_temp_files(folder / name):
            freed += path.stat().st_size
            path.unlink()
    return freed
