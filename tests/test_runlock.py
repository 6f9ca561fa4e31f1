"""The run lock belongs to the run's process alone (issue 22, case 1): children it forks (DataLoader workers)
never hold it, a live second process is refused, a record left on another host is reported with that host."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from utils.errors import UserError
from utils.runlock import RunLock

# holds the lock on <argv[1]>, forks two children that outlive it (as DataLoader workers do until they notice
# that their parent died), prints their pids and waits
HOLDER = """
import multiprocessing as mp, os, sys, time
from pathlib import Path
from utils.runlock import RunLock
lock = RunLock(Path(sys.argv[1]), children_hold=sys.argv[2] == "hold")
lock.acquire()
children = [mp.get_context("fork").Process(target=time.sleep, args=(120,)) for _ in range(2)]
for c in children:
    c.start()
print(" ".join(str(c.pid) for c in children), flush=True)
time.sleep(120)
"""


def hold(run: Path, children: str = "alone") -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), children], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    children = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(children) == 2, "the holder did not start"
    return proc, children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


def test_lock_of_a_killed_process_is_free_at_once_though_its_children_live(tmp_path):
    proc, children = hold(tmp_path / "run")
    try:
        with pytest.raises(UserError, match=f'is in use by .*"pid": {proc.pid}'):
            RunLock(tmp_path / "run").acquire()   # a live holder is refused
        proc.kill()   # SIGKILL, as the OOM killer or a preempting scheduler does
        proc.wait()
        assert all(alive(pid) for pid in children), "the forked children outlive their parent"
        lock = RunLock(tmp_path / "run")
        note = lock.acquire()   # at once, while the children still run
        assert note and f'"pid": {proc.pid}' in note and "has ended" in note
        lock.release()
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.kill()


def test_by_default_forked_children_hold_the_lock_too(tmp_path):
    """data.prepare's pool workers write what its lock guards: the lock lasts while any of them runs."""
    proc, children = hold(tmp_path / "run", "hold")
    try:
        proc.kill()
        proc.wait()
        with pytest.raises(UserError, match="is in use by"):
            RunLock(tmp_path / "run").acquire()
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_lock_held_in_this_process_refuses_a_second_taker(tmp_path):
    first = RunLock(tmp_path / "run")
    first.acquire()
    try:
        with pytest.raises(UserError, match=f'in use by .*"pid": {os.getpid()}.*choose another --exp_name'):
            RunLock(tmp_path / "run").acquire()
    finally:
        first.release()
    assert first.path.read_text() == ""


def test_a_lock_left_on_another_host_is_reported_with_the_host(tmp_path):
    lock = RunLock(tmp_path / "run")
    record = {"host": "gpu-node-17", "pid": 4242, "since": "2026-01-01 00:00:00"}
    lock.path.write_text(json.dumps(record))
    with pytest.raises(UserError) as refused:
        lock.acquire()
    message = str(refused.value)
    assert "gpu-node-17" in message and "4242" in message and str(lock.path) in message and "delete" in message
    assert json.loads(lock.path.read_text()) == record, "the other host's record is kept"
    lock.path.unlink()   # the way out the message names
    assert lock.acquire() is None
    lock.release()


def test_a_child_forked_while_the_lock_is_held_cannot_release_it(tmp_path):
    lock = RunLock(tmp_path / "run", children_hold=False)
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:   # the child: its copy is closed; releasing is a no-op
            lock.release()
            os._exit(0 if lock.fd is None else 1)
        assert os.waitpid(pid, 0)[1] == 0
        with pytest.raises(UserError, match="in use by"):
            RunLock(tmp_path / "run").acquire()
    finally:
        lock.release()
