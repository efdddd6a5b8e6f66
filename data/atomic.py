"""Crash-safe file writes (temp file + fsync + rename) and content hashing for dataset outputs."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

# NamedTemporaryFile creates files 0600; dataset files should be readable like any other output.
_NEW_FILE_MODE = 0o644
# Names of atomic_write_bytes temp files: "." + target name + "." + tempfile's 8 random characters + ".tmp".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class DatasetWriteError(OSError):
    """A dataset file that could not be written; ``str(err)`` is one line, ``"PATH: problem"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # keep the message on one line
        super().__init__(f"{self.path}: {self.problem}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles its args only; keep (path, problem) so the error survives worker processes.
        return (type(self), (self.path, self.problem))


def _describe(exc: BaseException) -> str:
    """One-line description of an exception, naming the errno symbol when there is one."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return f"{type(exc).__name__}: {exc}"


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); best effort because not every platform/filesystem allows it."""
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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one.

    Missing parent folders are created. On any failure the temp file is removed and
    :class:`DatasetWriteError` is raised; an existing file at ``path`` is left untouched.

    Returns:
        The destination path.
    """
    path = Path(path)
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
            mode = path.stat().st_mode & 0o777 if path.exists() else _NEW_FILE_MODE
            os.fchmod(tmp.fileno(), mode)
        os.replace(tmp_name, path)
        tmp_name = None  # now owned by the destination
    except BaseException as exc:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
        if isinstance(exc, (OSError, ValueError, TypeError)) and not isinstance(exc, DatasetWriteError):
            raise DatasetWriteError(path, f"cannot write: {_describe(exc)}") from exc
        raise
    _fsync_dir(path.parent)
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
    with open(path, "rb") as fh:
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
    for folder, _, names in os.walk(root):
        for name in names:
            if _TEMP_NAME.match(name):
                path = Path(folder) / name
                try:
                    path.unlink()
                except OSError:
                    continue
                removed.append(path)
    return sorted(removed)
