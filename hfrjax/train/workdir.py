"""One trainer per workdir: an advisory lock holding the owner's pid and host.

Two trainers writing one workdir lose checkpoints and interleave logs, so the second one is
refused with a message naming the first. The lock is an ``fcntl`` lock on ``workdir/.lock``:
the kernel releases it when its process dies, so a lock file left by a killed run is stale,
detected as such, and taken over with a note. In multi-host runs only process 0 writes, so only
it takes the lock (``active=False`` elsewhere).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from absl import logging

LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
    """Another live trainer holds the workdir."""


class WorkdirLock:
    def __init__(self, workdir: str | os.PathLike, *, active: bool = True):
        self.path = Path(workdir) / LOCK_FILE
        self.active = active
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        if not self.active:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise WorkdirBusyError(
                f"workdir {self.path.parent} is in use by another trainer "
                f"(pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
                f"{holder.get('since', '?')}); stop it or choose another --workdir"
            ) from None
        old = _read(fd)
        if old:
            logging.warning(
                "workdir %s: taking over a stale lock of pid %s on host %s (that run ended "
                "without releasing it, e.g. it was killed)",
                self.path.parent,
                old.get("pid"),
                old.get("host"),
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
