"""Small file helpers shared across the library."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only when the block ends without error
    (temporary file in the same directory, then a rename): readers, and a crash, see either
    the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (see `atomic_output`)."""
    with atomic_output(path) as f:
        f.write(text)
    return Path(path)


class BadFileError(ValueError):
    """A file that exists but cannot be read as what it should be; the message names it."""


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``; a missing, empty, truncated or non-UTF-8 file is an error
    that names the file (and the line and column of a syntax error)."""
    import json

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    if not raw.strip():
        raise BadFileError(f"{path} is empty (0 bytes of JSON): was it cut short by a crash?")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadFileError(f"{path} is not UTF-8 text (byte {e.start}): {e.reason}") from None
    except json.JSONDecodeError as e:
        raise BadFileError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "truncated or hand-edited?"
        ) from None
