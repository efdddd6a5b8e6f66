"""Crash-safe file writes (temp file + fsync + rename) and content hashing for dataset outputs."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from data.confine import check_not_link, note_written, open_file, parent_dir, remove_file
from data.errors import DatasetWriteError

__all__ = [
    "DatasetWriteError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "dumps_json",
    "remove_stale_temp_files",
    "sha256_file",
    "to_jsonable",
]

# Temp files are created 0600; dataset files should be readable like any other output.
_NEW_FILE_MODE = 0o644
# Names of atomic_write_bytes temp files: "." + target name + "." + 8 random characters + ".tmp".
_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _describe(exc: BaseException) -> str:
    """One-line description of an exception, naming the errno symbol when there is one."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return f"{type(exc).__name__}: {exc}"


def _create_temp(dir_fd: int, name: str) -> tuple[int, str]:
    """Create a new empty temp file next to ``name`` (never through a link); returns (fd, temp name)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = f".{name}.{''.join(secrets.choice(_TEMP_CHARS) for _ in range(8))}.tmp"
        try:
            return os.open(tmp, flags, 0o600, dir_fd=dir_fd), tmp
        except FileExistsError:
            continue


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (it may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _replace_in(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to a temp file in the folder ``dir_fd``, fsync it and rename it over ``name``."""
    fd, tmp = _create_temp(dir_fd, name)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            try:
                old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                mode = old.st_mode & 0o777 if stat.S_ISREG(old.st_mode) else _NEW_FILE_MODE
            except FileNotFoundError:
                mode = _NEW_FILE_MODE
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    try:
        os.fsync(dir_fd)  # persist the rename itself; best effort because not every filesystem allows it
    except OSError:
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one.

    Missing parent folders are created. Inside a confined dataset folder (:mod:`data.confine`) no symbolic link is
    followed or replaced: a link at or above ``path`` (below the folder) is refused with
    :class:`~data.errors.UnsafePathError`. On any failure the temp file is removed and :class:`DatasetWriteError` is
    raised; an existing file at ``path`` is left untouched.

    Returns:
        The destination path.
    """
    path = Path(path)
    try:
        with parent_dir(path, create=True) as (dir_fd, name, confined):
            check_not_link(path, dir_fd, name, confined)
            _replace_in(dir_fd, name, data)
        note_written(path)
    except DatasetWriteError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetWriteError(path, f"cannot write: {_describe(exc)}") from exc
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` (newlines written as-is, no platform translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, sets and paths to plain JSON types (sets sorted for determinism).

    Raises:
        TypeError: for values with no JSON form; ValueError: for NaN/inf (not valid JSON).
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite float {obj!r} is not valid JSON")
        return obj
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Deterministic JSON text: sorted keys, shortest round-trip float repr, no NaN; ``indent=None`` is one line."""
    separators = (",", ": ") if indent is not None else (",", ":")
    return json.dumps(
        to_jsonable(obj), sort_keys=True, indent=indent, separators=separators, ensure_ascii=False, allow_nan=False
    )


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as deterministic JSON (sorted keys, indent=2, trailing newline)."""
    try:
        text = dumps_json(obj) + "\n"
    except (TypeError, ValueError) as exc:
        raise DatasetWriteError(path, f"cannot serialize to JSON: {exc}") from exc
    return atomic_write_text(path, text)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with os.fdopen(open_file(path, os.O_RDONLY), "rb") as fh:  # no link followed inside a confined folder
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temp_files(root: str | Path) -> list[Path]:
    """Delete temp files that :func:`atomic_write_bytes` left under ``root`` when its process was killed.

    Call it only while no other writer uses ``root`` (at the start of a run): a live writer's temp file looks the
    same. Returns the removed paths; files that vanish or cannot be removed meanwhile are left alone.
    """
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for folder, _, names in os.walk(root):  # linked folders are listed but never entered
        for name in names:
            if _TEMP_NAME.match(name):
                path = Path(folder) / name
                try:
                    if remove_file(path):  # a regular file only: a link of that name is not ours
                        removed.append(path)
                except OSError:
                    continue
    return sorted(removed)
