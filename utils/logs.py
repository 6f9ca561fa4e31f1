"""The "manme" logger (console and the run's train.log) and the per-step JSONL log (train_log.jsonl)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from utils.io import atomic_write_text, disk_full

log = logging.getLogger("manme")


def close_logging() -> None:
    """Remove the handlers setup_logging added (a finished run's log file, a console that may go away)."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def setup_logging(log_file: str | Path | None = None, is_main: bool = True) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    close_logging()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if log_file is not None and is_main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(file_handler)


class StepLog:
    """train_log.jsonl: one JSON line per optimizer step, appended and flushed in groups."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        if resume_step and path.exists():
            # drop lines written after the checkpoint we resume from: they are about to be redone
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif not resume_step:
            path.write_text("")

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        try:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(row) + "\n" for row in rows))
                f.flush()
        except OSError as e:
            full = disk_full(e)
            if full is None:
                raise
            # a cut last line is harmless: a resume keeps only whole lines up to its checkpoint's step
            error = OSError(f"{self.path}: could not be appended to: the disk is full ({full.strerror}); free space "
                            f"on that disk and continue the run with --resume auto (the steps after its last "
                            f"checkpoint are redone and logged again)")
            error.errno = full.errno
            raise error from None


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
