"""A run directory has one owner at a time, and its files are checked before they are trusted.

Ownership: the process that trains into a run directory holds an exclusive ``fcntl.flock`` on
the run directory itself for the run's life (a directory cannot be unlinked while it holds a run,
so deleting a file never frees the lock), and writes its pid into ``.trpo-lab.lock`` inside it.
The operating system releases the lock when the process ends, however it ends (a SIGKILL never
leaves a stale lock). A second process that finds the lock taken refuses at once, naming the
directory and the pid written in the lock file.

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
    """A file of the run directory is unreadable or inconsistent; nothing was changed.

    ``exit_code``: 1 for a file that is damaged (cut, edited, unreadable), 2 for a run
    directory whose files do not make a run this command can resume (a file the checkpoint
    stands on is missing; a checkpoint that does not fit the model), refused like a
    configuration."""

    def __init__(self, path: Path, problem: str, advice: str, exit_code: int = 1):
        super().__init__(f"{path}: {problem}; nothing was changed. {advice}")
        self.path, self.problem, self.advice = path, problem, advice
        self.exit_code = exit_code


def start_over_advice(path: Path) -> str:
    """How to go on when ``path`` (a file the checkpoint stands on) is gone."""
    return (f"Put back a good copy of {path.name} if you keep one; or start over: another "
            f"hydra.run.dir, or delete checkpoint.pt and summary.json in {path.parent} to train "
            f"it again from update 0")


def _holder_pid(run_dir: Path) -> int | None:
    """The pid the holder wrote into the lock file (None if it is gone or unreadable)."""
    try:
        text = (run_dir / LOCK_FILE).read_text(errors="replace")[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _flock(fd: int, run_dir: Path) -> bool:
    """Lock ``fd`` exclusively: True when held, False when its filesystem cannot lock it;
    :class:`RunDirBusy` (``fd`` closed) when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in UNSUPPORTED or error.errno == errno.EBADF:
            return False  # EBADF: NFS locks a read-only descriptor (a directory's) no more
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirBusy(run_dir, _holder_pid(run_dir)) from None
        raise
    return True


def claim(run_dir: Path) -> None:
    """Take the run directory for this process (creating it); idempotent within a process.

    Raises :class:`RunDirBusy` if another process holds it. The lock is on the directory
    itself; where its filesystem cannot lock a directory (NFS), on the lock file, checked to be
    the file that the directory holds after locking it (a file deleted meanwhile is not a lock).
    """
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)  # close-on-exec (PEP 446)
    if not _flock(fd, run_dir):
        os.close(fd)
        fd = _lock_file(run_dir)
    try:  # who holds it, for the refusal of a second process
        pid_fd = os.open(run_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(pid_fd, 0)
            os.pwrite(pid_fd, f"{os.getpid()}\n".encode(), 0)
        finally:
            os.close(pid_fd)
    except OSError:
        os.close(fd)
        raise
    _held[run_dir] = fd


def _lock_file(run_dir: Path) -> int:
    """The flock on ``.trpo-lab.lock`` (where the directory cannot be locked); a warning where
    the file cannot be locked either."""
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock(fd, run_dir):
            print(f"trpo-lab: warning: {run_dir} cannot be locked on this filesystem; make "
                  f"sure no other process uses it", file=sys.stderr)
            return fd
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was deleted or replaced after we opened it: lock the new one


def release(run_dir: Path) -> None:
    """Give the run directory up (the pid file stays, naming the last owner)."""
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


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # ENAMETOOLONG: a name that cannot exist
        return False


def name_too_long(existing: Path, names: list[str]) -> str | None:
    """Why directories ``names`` cannot be created below ``existing``: a name longer than its
    filesystem allows (NAME_MAX, 255 bytes on most), or None."""
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for name in names:
        size = len(os.fsencode(name))
        if size > limit:
            shown = name if len(name) <= 24 else f"{name[:12]}...{name[-8:]}"
            return (f"its part {shown!r} is {size} bytes long, more than the {limit} its "
                    f"filesystem allows in a name (File name too long)")
    return None


def unwritable_dir_problem(target: Path) -> str | None:
    """Why ``target`` cannot be a run directory, or None: its nearest existing ancestor must be
    a directory in which this process can really create entries (``os.access`` says yes for
    root on read-only places such as /proc). Leaves nothing behind."""
    path = Path(target).absolute()
    missing = []
    while not _exists(path):
        missing.append(path.name)
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    too_long = name_too_long(path, missing)
    if too_long:
        return too_long
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trpo-lab-probe-", dir=path))
    except OSError as error:
        return f"cannot create a directory in {path} ({error.strerror or error})"
    return None
