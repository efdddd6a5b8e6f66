"""Append-only JSON Lines manifest (one entry per finished image, crash tolerant) and run-level provenance JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.atomic import DatasetWriteError, atomic_write_bytes, atomic_write_json, dumps_json
from data.confine import open_file

# DICOM patient-identifying attribute names that must never reach dataset.json.
_PATIENT_KEYS = frozenset(
    k.lower()
    for k in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientAddress",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientTelephoneNumbers",
        "AccessionNumber",
        "InstitutionName",
        "ReferringPhysicianName",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    )
)


class Manifest:
    """An append-only ``.jsonl`` file: :meth:`append` one dict per line, :meth:`read` them back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tail_checked = False
        self.bad_lines: list[int] = []  # unparsable non-final lines skipped by the last read(skip_bad=True)

    def _drop_torn_tail(self, fd: int) -> None:
        """Cut a partial last line left by a crash, so the next entry does not get glued onto it."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        # Scan back in blocks to the last newline; everything after it is the torn line.
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - 65536)
            idx = os.pread(fd, pos - start, start).rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        os.ftruncate(fd, keep)  # on this descriptor: the file that is appended to, never a link's target

    def _private_copy(self, fd: int) -> int:
        """Replace a hard-linked manifest by a copy of it (new inode), so the other name never changes; new fd."""
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        atomic_write_bytes(self.path, data)
        return open_file(self.path, os.O_RDWR | os.O_APPEND)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` as one sorted-key JSON line, then flush and fsync.

        Raises:
            DatasetWriteError: if the entry is not JSON-serializable or the file cannot be written.
        """
        try:
            line = (dumps_json(entry, indent=None) + "\n").encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise DatasetWriteError(self.path, f"cannot serialize manifest entry: {exc}") from exc
        try:
            # O_APPEND + a single write per line keeps concurrent appenders from interleaving bytes; O_RDWR lets the
            # torn-tail check read the same file it truncates. Inside a confined folder no link is followed.
            fd = open_file(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644, create_dirs=True)
            if os.fstat(fd).st_nlink > 1:  # a hard link shares this file with another name: append to our own copy
                fd = self._private_copy(fd)
            try:
                if not self._tail_checked:
                    self._drop_torn_tail(fd)
                    self._tail_checked = True
                view = memoryview(line)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except DatasetWriteError:
            raise
        except OSError as exc:
            raise DatasetWriteError(self.path, f"cannot append to manifest: {exc.strerror or exc}") from exc

    def read(self, skip_bad: bool = False) -> list[dict[str, Any]]:
        """All complete entries; a torn last line (crash mid-write) is ignored, a bad line elsewhere raises ValueError.

        With ``skip_bad`` a bad line elsewhere is skipped too and its 1-based number kept in :attr:`bad_lines`, so
        a resuming caller can warn and treat it as a missing record (its sample gets redone).
        """
        self.bad_lines = []
        try:
            fd = open_file(self.path, os.O_RDONLY)  # inside a confined folder a linked manifest is refused
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as fh:
            lines = fh.read().split(b"\n")
        # The text after the last "\n" is either "" (clean) or a line that never got its newline.
        entries = []
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            is_last = lineno == len(lines)
            try:
                entry = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if is_last:
                    continue
                if skip_bad:
                    self.bad_lines.append(lineno)
                    continue
                raise ValueError(f"{self.path}:{lineno}: corrupt manifest line ({exc})") from exc
            if not isinstance(entry, dict):
                if skip_bad:
                    self.bad_lines.append(lineno)
                    continue
                raise ValueError(f"{self.path}:{lineno}: manifest entry is not a JSON object")
            entries.append(entry)
        return entries

    def __len__(self) -> int:
        return len(self.read())


def _find_patient_keys(obj: Any, where: str = "") -> list[str]:
    """Dotted paths of keys that look like DICOM patient identifiers."""
    found = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key_path = f"{where}.{k}" if where else str(k)
            if str(k).replace("_", "").lower() in _PATIENT_KEYS:
                found.append(key_path)
            found += _find_patient_keys(v, key_path)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += _find_patient_keys(v, f"{where}[{i}]")
    return found


def write_run_info(path: str | Path, info: Mapping[str, Any]) -> Path:
    """Atomically write run provenance (versions, parameters, seed, CT checksums) as deterministic JSON.

    Raises:
        DatasetWriteError: if ``info`` contains patient-identifying keys (e.g. PatientName) or cannot be written.
    """
    bad = _find_patient_keys(info)
    if bad:
        raise DatasetWriteError(path, f"refusing to write patient-identifying keys: {', '.join(bad)}")
    return atomic_write_json(path, info)
