"""One owner per run folder: an exclusive lock held while a process trains into it.

The lock is an OS lock (flock) on `<output_dir>/.<exp_name>.lock`, released by the OS when the
holder exits or dies, so a lock left by a dead process is taken over at once; the file records
the holder (host, pid, start time) for the message a second process gets.

Why flock, and why forked children close it: a flock belongs to the open file description, which
fork() shares, so DataLoader workers would hold the lock of a run that was killed until they notice
their parent is gone: a resume at once was refused, naming a dead pid. With `children_hold=False` (a
training run: its workers only read) every forked child closes its copy of the descriptor at once
(os.register_at_fork); closing a copy leaves the parent's lock in place, and the OS drops it the moment
the parent dies. data.prepare keeps the default: its pool workers write what the lock guards, so the
lock lasts while any of them still runs. A POSIX record
lock (lockf) is not inherited either, but it is dropped when the process closes *any* descriptor of
the file and never excludes a second lock taken in the same process (in-process commands and tests
rely on that). A lock held on another host is invisible to some shared file systems, so a record left
by another host's process that did not release it is reported, never taken over silently.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from utils.errors import UserError

_HELD: set[RunLock] = set()  # the locks with children_hold=False this process holds (a forked child drops them)


def _close_in_child() -> None:
    for lock in _HELD:
        if lock.fd is not None:
            os.close(lock.fd)  # the child's copy only: the parent still holds the lock
            lock.fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    def __init__(self, run_dir: Path, other: str = "choose another --exp_name", children_hold: bool = True):
        """A lock on `run_dir` (a run folder, or anything one process at a time may write); `other` is the
        way out a second process is told besides waiting; `children_hold`: processes forked while it is
        held hold it too (False: the lock belongs to this process alone)."""
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.other, self.fd, self.children_hold = other, None, children_hold

    def acquire(self) -> str | None:
        """Take the lock or raise UserError naming the holder; returns a note when a dead holder's record
        was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        folder = self.path.parent / self.path.name[1:-5]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "another process"
            os.close(fd)
            raise UserError(f"{folder} is in use by {holder}; wait for it to finish, or {self.other}") from None
        previous = _read(fd)
        host = socket.gethostname()
        try:
            other_host = json.loads(previous).get("host") if previous else None
        except (ValueError, AttributeError):
            other_host = None
        if other_host and other_host != host:
            os.close(fd)
            raise UserError(f"{folder} was locked by {previous}, a process on host {other_host} that did not "
                            f"release it; this host cannot tell whether it still runs (the shared file system "
                            f"may not pass locks between hosts). If it has ended, delete {self.path} and run "
                            f"again; else wait for it, or {self.other}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": host, "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self.fd = fd
        if not self.children_hold:
            _HELD.add(self)
        return f"took over the lock left by {previous} (that process has ended)" if previous else None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        _HELD.discard(self)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
