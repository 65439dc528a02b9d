"""A run directory has one owner at a time, and its files are checked before they are trusted.

Ownership: the process that trains into a run directory holds an exclusive ``fcntl.flock`` on
``.trpo-lab.lock`` inside it for the run's life. The operating system releases it when the process
ends, however it ends (a SIGKILL never leaves a stale lock). A second process that finds the lock
taken refuses at once, naming the directory and the pid written in the lock file.

Every file a run writes that a resume would read (``checkpoint.pt``, ``metrics.csv``) is checked
first; a file that is unreadable or does not hold what the checkpoint says raises
:class:`RunFileError` with one line naming the file and what to do, before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import tempfile
from pathlib import Path

LOCK_FILE = ".trpo-lab.lock"

# flock is not available (some network and parallel filesystems without the flock option)
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

_held: dict[Path, int] = {}  # run directory -> fd of its lock file, for this process


class RunDirBusy(RuntimeError):
    """Another live process owns the run directory."""

    def __init__(self, run_dir: Path, pid: int | None):
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{run_dir} is in use by {holder} (it holds {LOCK_FILE}); wait for "
                         f"it to end or choose another hydra.run.dir")
        self.run_dir, self.pid = run_dir, pid


class RunFileError(RuntimeError):
    """A file of the run directory is unreadable or inconsistent; nothing was changed."""

    def __init__(self, path: Path, problem: str, advice: str):
        super().__init__(f"{path}: {problem}; nothing was changed. {advice}")
        self.path, self.problem, self.advice = path, problem, advice


def _holder_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def claim(run_dir: Path) -> None:
    """Take the run directory for this process (creating it); idempotent within a process.

    Raises :class:`RunDirBusy` if another process holds it.
    """
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # close-on-exec (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in UNSUPPORTED:  # some cluster filesystems: run, but say so
            print(f"trpo-lab: warning: {run_dir} cannot be locked on this filesystem "
                  f"({error.strerror}); make sure no other process uses it", file=sys.stderr)
        elif error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            pid = _holder_pid(fd)
            os.close(fd)
            raise RunDirBusy(run_dir, pid) from None
        else:
            os.close(fd)
            raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[run_dir] = fd


def release(run_dir: Path) -> None:
    """Give the run directory up (the lock file stays: removing it would race a new owner)."""
    fd = _held.pop(Path(run_dir).absolute(), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the last descriptor releases the flock


def holds(run_dir: Path) -> bool:
    return Path(run_dir).absolute() in _held


MIN_FREE_BYTES = 1 << 20  # Hydra's .hydra/ and a first checkpoint of a small policy


def free_space_problem(run_dir: Path) -> str | None:
    """A disk already full at start: say so in one line before Hydra fails writing .hydra/."""
    try:
        stat = os.statvfs(run_dir)
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    if free >= MIN_FREE_BYTES:
        return None
    return (f"cannot write {run_dir}: only {free} bytes free on its disk (No space left on "
            f"device); free some space and rerun the same command")


def unwritable_dir_problem(target: Path) -> str | None:
    """Why ``target`` cannot be a run directory, or None: its nearest existing ancestor must be
    a directory in which this process can really create entries (``os.access`` says yes for
    root on read-only places such as /proc). Leaves nothing behind."""
    path = Path(target).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trpo-lab-probe-", dir=path))
    except OSError as error:
        return f"cannot create a directory in {path} ({error.strerror or error})"
    return None
