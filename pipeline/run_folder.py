"""The run-level side of ``generate``: claim, lock, check and record one output folder (serial and Ray driver).

What a run may touch in its output folder (README, "What generate touches"): it writes only into a new or empty
folder or one marked as a DiffusionXRay dataset (``.diffusionxray.json``), holds the folder's lock for the whole
run, never follows a symbolic link below the folder (:mod:`data.confine`), refuses other settings whether they are
recorded in the marker, ``config.json`` or the manifest, and ``--restart`` removes only the files its manifest says
it wrote plus its own dataset-level files.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from data.atomic import DatasetWriteError, atomic_write_json, remove_stale_temp_files, sha256_file
from data.errors import UnsafePathError
from pipeline.config import GenerateConfig
from pipeline.publish import WRITERS, code_version

MANIFEST = "manifest.jsonl"
# Folders of per-sample outputs (one per writer) and of dataset-level label files.
OUTPUT_FOLDERS = (*dict.fromkeys(writer.folder for writer in WRITERS), "labels", "annotations")
# Dataset-level files, rebuilt from the manifest at the end of every run.
DATASET_FILES = (
    "config.json",
    "dataset.json",
    MANIFEST,
    "metadata.csv",
    "data.yaml",
    "annotations/coco.json",
    "contact_sheet.png",
)
# Every top-level name the tool writes (the rest of a folder is never touched).
OUTPUT_NAMES = OUTPUT_FOLDERS + tuple(name for name in DATASET_FILES if "/" not in name)


class RunSettingsError(ValueError):
    """Run settings that cannot be used together; str is one line."""


class RunMismatchError(RunSettingsError):
    """An output folder holds a run with other settings; str is one line naming the folder."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str`` is the one line saying where it stopped and how to resume."""

    def __init__(self, out_dir: Path, finished: int) -> None:
        super().__init__(out_dir, finished)
        self.out_dir = out_dir
        self.finished = finished

    def __str__(self) -> str:
        return (
            f"interrupted: {self.out_dir} holds {self.finished} finished image(s) of this run; "
            "run the same command again to resume"
        )


def make_output_folder(out_dir: Path) -> None:
    """Create the dataset folder, or raise a one-line ``DatasetWriteError``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        code = f" ({errno.errorcode[err.errno]})" if err.errno in errno.errorcode else ""
        raise DatasetWriteError(out_dir, f"cannot create output folder: {err.strerror or err}{code}") from err


def read_manifest(out_dir: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The manifest's readable entries; an unreadable line is skipped (its sample redone), ``warn`` says so."""
    from data.manifest import Manifest

    manifest = Manifest(out_dir / MANIFEST)
    entries = manifest.read(skip_bad=True)
    if warn and manifest.bad_lines:
        where = ", ".join(f"line {n}" for n in manifest.bad_lines)
        print(
            f"warning: {manifest.path}: ignored unreadable records ({where}); their samples will be redone",
            file=sys.stderr,
        )
    return entries


def completed_entries(
    out_dir: Path, fingerprint: str, entries: list[dict[str, Any]], warn: bool = False
) -> dict[tuple[str, int], dict[str, Any]]:
    """Manifest entries whose files all exist with the recorded checksums (last entry per sample wins).

    A malformed entry counts as a missing record, so its sample is redone; ``warn`` says so on stderr in one line.
    """
    malformed = 0
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in entries:
        if entry.get("config_fingerprint") != fingerprint:
            continue
        try:
            key = (str(entry["ct_sha256"]), int(entry["sample_index"]))
            files = entry["files"]
            if not isinstance(files, dict) or not files or not isinstance(entry["record"], dict):
                raise TypeError("files/record")
            if not all(member(out_dir, n) for n in files) or not _names_its_files(entry["record"], files):
                raise ValueError("a file name outside the folder")  # hand-made: never read, written or removed
        except (KeyError, TypeError, ValueError):
            malformed += 1
            continue
        if all(_has_checksum(out_dir, name, digest) for name, digest in files.items()):
            done[key] = entry
    if warn and malformed:
        print(
            f"warning: {out_dir / MANIFEST}: ignored unreadable records ({malformed} malformed entries); "
            "their samples will be redone",
            file=sys.stderr,
        )
    return done


def member(out_dir: Path, name: Any) -> Path | None:
    """``out_dir/name`` when ``name`` is a plain relative path inside the folder (no absolute path, no ``..``)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return None
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", ".", "") for part in rel.parts) or str(rel) != name:
        return None
    return out_dir / rel


def _names_its_files(record: dict[str, Any], files: dict[str, Any]) -> bool:
    """Whether every file a record names (its image, ``*_file`` attributes) is one of its entry's checked files."""
    named = [record.get("file_name")] + [
        v for k, v in (record.get("attributes") or {}).items() if k.endswith("_file") and isinstance(v, str)
    ]
    return all(isinstance(n, str) and n in files for n in named)


def _has_checksum(out_dir: Path, name: Any, digest: Any) -> bool:
    """Whether ``out_dir/name`` is a file inside the folder (no link, no escape) with sha256 ``digest``."""
    path = member(out_dir, name)
    try:
        return path is not None and sha256_file(path) == digest
    except OSError:  # missing, a folder, a link: not a finished output
        return False


def recorded_settings(out_dir: Path, config: GenerateConfig, marker: dict[str, Any] | None,
                      entries: list[dict[str, Any]]) -> list[str]:  # fmt: skip
    """Where ``out_dir`` records settings other than ``config``'s: marker, config.json and/or manifest."""
    fingerprint = config.fingerprint()
    where = []
    if marker is not None and marker.get("config_fingerprint") != fingerprint:
        where.append(marker_name())
    previous = out_dir / "config.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(config.to_dict(), default=str)):
            where.append("config.json")
    if any("config_fingerprint" in e and e["config_fingerprint"] != fingerprint for e in entries):
        where.append(MANIFEST)
    return where


def marker_name() -> str:
    """File name of the ownership marker."""
    from data.ownership import MARKER

    return MARKER


def discard_run(out_dir: Path, entries: list[dict[str, Any]], marker: dict[str, Any] | None) -> None:
    """``--restart``: remove the outputs the manifest records (if unchanged) and the tool's dataset files, no more.

    The dataset files are those the marker lists (what the earlier run's end wrote) and the fixed dataset-level
    names; folders left empty are removed. A recorded file whose bytes changed since is left in place.
    """
    from data.confine import remove_file
    from data.ownership import listed_dataset_files

    removed = changed = 0
    for entry in entries:
        files = entry.get("files") if isinstance(entry.get("files"), dict) else {}
        for name, digest in files.items():
            path = member(out_dir, name)
            if path is None:
                continue  # names a file outside the folder: never the tool's
            if _has_checksum(out_dir, name, digest):
                removed += remove_file(path)
            elif path.exists():
                changed += 1  # not what the tool wrote there: not ours to delete
    for name in dict.fromkeys([*listed_dataset_files(marker), *DATASET_FILES]):
        path = member(out_dir, name)
        try:
            removed += path is not None and remove_file(path)
        except OSError:  # a name that passes a link: not ours
            pass
    for folder in OUTPUT_FOLDERS:
        _remove_empty_folders(out_dir / folder)
    note = f"note: {out_dir}: --restart removed {removed} file(s) of the earlier run"
    if changed:
        note += f"; {changed} file(s) it recorded have changed since and were left in place"
    print(note, file=sys.stderr)


def _remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it that are (or become) empty; links are neither entered nor removed."""
    import os

    from data.confine import remove_empty_dir

    if top.is_symlink() or not top.is_dir():
        return
    for folder, _, _ in os.walk(top, topdown=False):
        remove_empty_dir(folder)


def check_run_settings(
    out_dir: Path, config: GenerateConfig, restart: bool, marker: dict[str, Any] | None,
    entries: list[dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    """Refuse to mix runs with different settings in one folder; ``restart`` removes the earlier run's outputs.

    Returns the manifest entries still valid for this run ([] after a restart).
    """
    where = recorded_settings(out_dir, config, marker, entries)
    if not where:
        return entries
    if not restart:
        raise RunMismatchError(
            f"{out_dir}: holds a run with different settings (recorded in its {', '.join(where)}); "
            "use another --out folder or --restart to discard it"
        )
    discard_run(out_dir, entries, marker)
    return []


class RunRecorder:
    """The run's one manifest writer: config.json before the first entry, at most one entry per (CT, sample).

    ``entries`` holds the manifest's verified entries from the start of the run plus every entry appended since;
    ``done`` their keys (it grows as samples complete, so a repeat, e.g. a copy of a CT on another Ray actor, is
    dropped).
    """

    def __init__(self, out_dir: Path, config: GenerateConfig, entries: dict[tuple[str, int], dict[str, Any]]) -> None:
        self.out_dir = out_dir
        self.config = config
        self.entries = dict(entries)
        self.done: set[tuple[str, int]] = set(entries)
        self._manifest: Any = None

    def append(self, entry: dict[str, Any]) -> None:
        """Record one finished sample unless its key is already recorded."""
        from data.manifest import Manifest

        key = (entry["ct_sha256"], int(entry["sample_index"]))
        if key in self.done:
            return
        if self._manifest is None:
            # Written with the first record, not at start: a run whose CTs all fail leaves no config.json.
            atomic_write_json(self.out_dir / "config.json", self.config.to_dict())
            self._manifest = Manifest(self.out_dir / MANIFEST)
        self._manifest.append(entry)
        self.entries[key] = entry
        self.done.add(key)


def _recorded(out_dir: Path, fingerprint: str, recorder: RunRecorder | None) -> int:
    """Samples of these settings the manifest records now (Ctrl-C may land between an append and its bookkeeping)."""
    known = len(recorder.done) if recorder is not None else 0
    try:
        keys = {(e.get("ct_sha256"), e.get("sample_index")) for e in read_manifest(out_dir)
                if e.get("config_fingerprint") == fingerprint}  # fmt: skip
    except (OSError, ValueError):
        return known
    return max(len(keys), known)


def _refuse_links(out_dir: Path) -> None:
    """Refuse a folder where a name the tool reads or writes is a symbolic link (one line naming the first)."""
    from data.confine import find_links
    from data.ownership import TOOL_FILES

    links = find_links(out_dir, OUTPUT_NAMES + TOOL_FILES)
    if links:
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise UnsafePathError(
            links[0],
            f"is a symbolic link inside the dataset folder {out_dir}{more}; DiffusionXRay does not follow links out "
            "of its output folder (replace the link by a real folder/file or choose another --out)",
        )


@contextmanager
def open_run(inputs: list[str], out_dir: Path, config: GenerateConfig, restart: bool) -> Iterator[RunRecorder]:
    """Claim ``out_dir`` for this run and yield its recorder; the folder stays locked until the block ends.

    Creates the folder, confines file operations to it, refuses a non-empty folder that is not ours (before
    writing anything there), takes its lock (refusing a second writer), refuses links below it and other settings
    (``restart`` discards them instead), marks it, clears temp files of a killed run and verifies the manifest. A
    folder the run left without outputs is given back as it was (removed if the run created it); Ctrl-C becomes
    :class:`RunInterrupted`.
    """
    from data import confine
    from data.ownership import MARKER, FolderLock, claim_check, foreign_entries, is_tool_file, write_marker

    if config.alias is not None and len(inputs) > 1:
        raise RunSettingsError(
            f"--alias names one CT but {len(inputs)} inputs were given; "
            "use --alias-csv (rows: sha256,alias) for several"
        )
    created = not out_dir.exists()
    make_output_folder(out_dir)
    lock = FolderLock(out_dir)
    unused = False
    try:
        with confine.guarded(out_dir):
            claim_check(out_dir)  # before the lock file is created: a folder that is not ours gets nothing
            lock.acquire()
            recorder: RunRecorder | None = None
            try:
                try:  # Ctrl-C from here on (verifying a large manifest, or the run itself) says where the run stands
                    marker = claim_check(out_dir)  # again, now that no other run can change it
                    _refuse_links(out_dir)
                    entries = check_run_settings(out_dir, config, restart, marker, read_manifest(out_dir, warn=True))
                    write_marker(out_dir, config.fingerprint(), code_version())
                    # Only this run writes here now, so any atomic-write temp file is a leftover of a SIGKILLed run.
                    removed = remove_stale_temp_files(out_dir)
                    if removed:
                        print(f"note: {out_dir}: removed {len(removed)} temp file(s) left by an interrupted run",
                              file=sys.stderr)  # fmt: skip
                    done = completed_entries(out_dir, config.fingerprint(), entries, True)
                    recorder = RunRecorder(out_dir, config, done)
                    yield recorder
                except KeyboardInterrupt:
                    raise RunInterrupted(out_dir, _recorded(out_dir, config.fingerprint(), recorder)) from None
                except OSError as err:  # reading or listing the folder failed (permissions...): one line, no traceback
                    if isinstance(err, DatasetWriteError):
                        raise
                    problem = f"cannot use the output folder: {err.strerror or err}"
                    raise DatasetWriteError(err.filename or out_dir, problem) from err
                # The marker lists the dataset-level files this run wrote, so a later --restart removes exactly those.
                samples = {str(n) for e in recorder.entries.values() for n in e.get("files", {})}
                made = sorted(
                    n for n in confine.written_under(out_dir)
                    if n not in samples and not is_tool_file(n) and (out_dir / n).is_file()  # not a failed sample's
                )  # fmt: skip
                write_marker(out_dir, config.fingerprint(), code_version(), made)
            finally:
                # Nothing but our bookkeeping here: leave the folder as the run found it (empty, or absent).
                if not (out_dir / MANIFEST).exists():  # nothing recorded: folders of failed samples are ours and empty
                    for folder in OUTPUT_FOLDERS:
                        _remove_empty_folders(out_dir / folder)
                unused = not foreign_entries(out_dir)
                try:
                    if unused:
                        confine.remove_file(out_dir / MARKER)
                finally:
                    lock.release(remove=unused or not (out_dir / MARKER).is_file())
    finally:  # also when the run fails (full disk): a folder this run made and left empty is removed again
        if unused and created:  # outside the guard: the folder itself is not a path below the confined root
            confine.remove_empty_dir(out_dir)
