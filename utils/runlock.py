"""One owner per run folder: an exclusive lock held while a process trains into it.

The lock is an OS lock (flock) on `<output_dir>/.<exp_name>.lock`, released by the OS when the
holder exits or dies, so a lock left by a dead process is taken over at once; the file records
the holder (host, pid, start time) for the message a second process gets.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from utils.errors import UserError


class RunLock:
    def __init__(self, run_dir: Path, other: str = "choose another --exp_name"):
        """A lock on `run_dir` (a run folder, or anything one process at a time may write); `other` is the
        way out a second process is told besides waiting."""
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.other, self.handle = other, None

    def acquire(self) -> str | None:
        """Take the lock or raise UserError naming the holder; returns a note when a dead holder's record
        was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.path.parent / self.path.name[1:-5]} is in use by {holder}; wait for it to "
                            f"finish, or {self.other}") from None
        handle.seek(0)
        previous = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self.handle = handle
        return f"took over the lock left by {previous} (that process has ended)" if previous else None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
