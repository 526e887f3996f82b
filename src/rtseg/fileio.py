"""Atomic file writes: the one implementation every writer in rtseg uses.

A file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed over
the target (atomic on POSIX within a filesystem), and the folder is fsync'ed. A reader or a resumed
run never sees half a file, and the previous file stays until the new one is complete. Failures
to write become one-line :class:`~rtseg.errors.DataError` naming the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

from .errors import DataError

PathLike = Union[str, os.PathLike]


def fsync_dir(folder: PathLike) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: Any, indent: int = 1) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")
