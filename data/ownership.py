"""Which dataset folders are DiffusionXRay's (a marker file) and one writer at a time in each (an OS file lock).

The marker ``.diffusionxray.json`` is written into a folder the first time the tool claims it (the folder was new
or empty); its content is deterministic (tool, settings fingerprint), so reruns stay byte-identical. The lock
``.diffusionxray.lock`` is a :mod:`filelock` ``flock`` lock: the kernel drops it when its process dies, so a killed
run never blocks the next one; ``.diffusionxray.pid`` names the holder while it runs (filelock records no PID).
All three live in the dataset folder and are the tool's own files, not dataset outputs.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_json, atomic_write_text
from data.confine import open_file, remove_file
from data.errors import DatasetWriteError, UnsafePathError

TOOL = "diffusionxray"
MARKER = ".diffusionxray.json"
LOCK = ".diffusionxray.lock"
LOCK_PID = ".diffusionxray.pid"
TOOL_FILES = (MARKER, LOCK, LOCK_PID)
# An atomic-write temp file of one of the tool files (a run killed while writing it).
_TOOL_TEMP = re.compile(r"^\.(\.diffusionxray\.(json|pid))\.[a-z0-9_]{8}\.tmp$")


class NotOurFolderError(DatasetWriteError):
    """A non-empty output folder that is not a DiffusionXRay dataset; ``str`` is one line naming it."""


class FolderInUseError(DatasetWriteError):
    """Another run holds the folder's lock; ``str`` is one line naming the folder and the holder's PID."""


def is_tool_file(name: str) -> bool:
    """Whether a top-level name is one of the tool's own bookkeeping files (or a temp file of one)."""
    return name in TOOL_FILES or _TOOL_TEMP.match(name) is not None


def foreign_entries(root: str | Path) -> list[str]:
    """Top-level names in ``root`` other than the tool's bookkeeping files (sorted; [] for a missing folder)."""
    try:
        return sorted(name for name in os.listdir(root) if not is_tool_file(name))
    except FileNotFoundError:
        return []
    except OSError as err:  # cannot tell whether it is empty: not a folder to write into
        raise DatasetWriteError(root, f"cannot list the output folder: {err.strerror or err}") from err


def marker_content(fingerprint: str, version: str, dataset_files: list[str] | None = None) -> dict[str, Any]:
    """The marker of a folder holding a run with settings ``fingerprint`` (deterministic: no time, no host).

    Args:
        dataset_files: root-relative dataset-level files the tool wrote there (label files, dataset.json, ...).
    """
    return {
        "tool": TOOL,
        "created_by": f"{TOOL} {version}",
        "config_fingerprint": fingerprint,
        "dataset_files": sorted(set(dataset_files or [])),
        "about": "DiffusionXRay dataset folder: generate writes here only its manifest-listed outputs and the "
        "dataset files listed here; --restart removes only those.",
    }


def read_marker(root: str | Path) -> dict[str, Any] | None:
    """The folder's marker, or None when it has none (or one the tool did not write)."""
    try:
        with os.fdopen(open_file(Path(root) / MARKER, os.O_RDONLY), "rb") as fh:
            marker = json.loads(fh.read().decode("utf-8"))
    except UnsafePathError:
        raise
    except (OSError, ValueError):  # missing, a folder, unreadable or not our JSON: no marker of ours
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == TOOL else None


def write_marker(root: str | Path, fingerprint: str, version: str, dataset_files: list[str] | None = None) -> None:
    """Mark ``root`` as a DiffusionXRay dataset of the given settings, adding ``dataset_files`` to those listed.

    A marker of the same settings keeps its creating version and its list (so a resumed run writes the same bytes).
    """
    old = read_marker(root)
    if old is not None and old.get("config_fingerprint") == fingerprint:
        listed = [n for n in old.get("dataset_files", []) if isinstance(n, str)]
        if set(dataset_files or []) <= set(listed):
            return
        version = str(old.get("created_by", "")).removeprefix(f"{TOOL} ") or version
        dataset_files = listed + list(dataset_files or [])
    atomic_write_json(Path(root) / MARKER, marker_content(fingerprint, version, dataset_files))


def listed_dataset_files(marker: dict[str, Any] | None) -> list[str]:
    """The dataset-level files a marker says the tool wrote."""
    files = (marker or {}).get("dataset_files", [])
    return [n for n in files if isinstance(n, str)] if isinstance(files, list) else []


def claim_check(root: str | Path) -> dict[str, Any] | None:
    """The folder's marker; a folder holding anything but its marker/lock files without a marker is refused.

    Raises:
        NotOurFolderError: ``root`` is not empty and has no DiffusionXRay marker.
    """
    marker = read_marker(root)
    if marker is None:
        others = foreign_entries(root)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise NotOurFolderError(
                root,
                f"is not empty ({shown}) and is not a DiffusionXRay dataset folder (no {MARKER}); DiffusionXRay "
                "writes only into a new or empty folder or one of its own datasets, and --restart discards only "
                "those: choose another --out",
            )
    return marker


class FolderLock:
    """The one-writer lock of a dataset folder (``with FolderLock(root):`` or :meth:`acquire`/:meth:`release`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock: Any = None

    def _holder(self) -> str:
        """'PID n' (plus ' on host h' when another host holds it) from the sidecar, or 'PID unknown'."""
        try:
            with os.fdopen(open_file(self.root / LOCK_PID, os.O_RDONLY), "rb") as fh:
                pid, _, host = fh.read(200).decode("utf-8", "replace").strip().partition(" ")
        except OSError:
            return "PID unknown"
        if not pid.isdigit():
            return "PID unknown"
        return f"PID {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            FolderInUseError: another process holds it (one line with the folder and the holder's PID).
            UnsafePathError: the lock file is a symbolic link.
        """
        from filelock import FileLock, Timeout

        path = self.root / LOCK
        if path.is_symlink():
            raise UnsafePathError(path, f"is a symbolic link inside the dataset folder {self.root}; remove it")
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FolderInUseError(
                self.root,
                f"another DiffusionXRay run ({self._holder()}) is writing to this folder; wait for it to end (or "
                "stop it), then run the same command again",
            ) from None
        except OSError as err:
            raise DatasetWriteError(path, f"cannot lock the output folder: {err.strerror or err}") from err
        self._lock = lock
        try:  # only a courtesy for the refusal message: a full disk must not stop the run here
            atomic_write_text(self.root / LOCK_PID, f"{os.getpid()} {socket.gethostname()}\n")
        except OSError:
            pass

    def release(self, remove: bool = False) -> None:
        """Drop the lock (and its PID sidecar); ``remove`` also deletes the lock file (the folder is being emptied)."""
        if self._lock is None:
            return
        try:
            remove_file(self.root / LOCK_PID)
            if remove:
                remove_file(self.root / LOCK)  # filelock re-checks the inode after locking, so a waiter is safe
        except OSError:
            pass
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
