"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import UserError


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    commit([(stage(path, write, binary), path)])


def stage(path: Path, write: Callable[[Any], None], binary: bool = False) -> Path:
    """The first half of atomic_write: `write(fileobj)` to a temporary file beside `path`, fsynced; returns
    its name for commit() (or discard()). A full disk fails here, naming `path`, with nothing left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file readable by its owner only; give it the permissions a plain open() would
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        discard([(Path(tmp), path)])
        full = disk_full(e)
        if full is not None:
            raise full_disk_error(path, full) from None
        raise
    return Path(tmp)


def commit(staged: list[tuple[Path, Path]]) -> None:
    """Rename staged temporary files over their targets, in order, and make the renames durable."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        discard(staged)
        raise
    for folder in {path.parent for _, path in staged}:
        try:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


def discard(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on a folder (flock on the folder itself: no lock file is left in it), waited for:
    writers of one set of files take turns, so their files never mix."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def disk_full(error: BaseException) -> OSError | None:
    """The out-of-space OSError behind `error`, if any: torch.save reports a failed write as
    "[enforce fail at inline_container.cc:...] unexpected pos", with the OSError as its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        error = error.__cause__ or error.__context__
    return None


def full_disk_error(path: Path, cause: OSError) -> OSError:
    """One line that names the file, says the disk is full, and that the file there before is untouched."""
    what = "the disk is full" if cause.errno == errno.ENOSPC else "the disk quota is used up"
    error = OSError(f"{path}: could not be written: {what} ({os.strerror(cause.errno)}); the file there before, "
                    f"if any, is unchanged. Free space on that disk (or write elsewhere) and run again")
    error.errno = cause.errno  # kept for callers; str() stays the one line above
    return error


def current_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it; put it back at once
    os.umask(umask)
    return umask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """json.load with an error that names the file and the position of the fault (a UserError)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}. "
                        f"Re-download or fix the file.") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}), so not a JSON file. "
                        f"Re-download or fix the file.") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None


def check_output_dir(folder: str | Path, flag: str, keep: bool = True) -> Path:
    """Prove `folder` writable before any work is done (creating it; with keep=False, folders this made are
    removed again, so a failed command leaves nothing behind); a UserError or PermissionError names `flag`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, not a folder; choose a folder")
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{folder}: output directory is not writable ({e.strerror}); "
                              f"choose another with {flag}") from None
    finally:
        if not keep:
            for p in made:  # deepest first
                if p.is_dir():
                    p.rmdir()
    return folder


def check_output_file(path: str | Path, flag: str, inputs: dict[str, str | Path | None] | None = None) -> Path:
    """`path` can be written as a file (its folder exists or can be made, and is writable) and is none of the
    command's `inputs` (flag -> path), checked before any work; nothing is left behind by the check."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name (e.g. {path / 'out'})")
    for name, given in (inputs or {}).items():
        if given and same_file(path, given):
            raise UserError(f"{flag} {path} is also the command's input {name} {given}: writing it would destroy "
                            f"that file; choose another {flag}")
    check_output_dir(path.parent, flag, keep=False)
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same path once resolved (links followed, `..` removed), or one
    file on disk reached through two names (a hard link, a bind mount)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: then they are not one existing file
        return False
