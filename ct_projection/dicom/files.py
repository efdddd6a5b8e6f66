"""Which files are DICOM: the Part 10 marker (``pydicom.misc.is_dicom``), preamble-less exports, non-image objects."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

from ct_projection.volume import one_line_reason

# Files that are certainly not DICOM images; skipped without opening them.
_NON_DICOM_SUFFIXES = {
    ".txt", ".xml", ".json", ".csv", ".md", ".html", ".pdf", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".zip",
    ".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".zraw", ".py", ".yaml", ".yml", ".log", ".ini",
}


def looks_like_dicom(path: Path) -> bool:
    """Cheap check: the Part 10 'DICM' marker, or a .dcm/.ima/.dicom suffix, or a suffix-less file that parses."""
    path = Path(path)
    if path.name.startswith(".") or path.suffix.lower() in _NON_DICOM_SUFFIXES or path.name.upper() == "DICOMDIR":
        return False
    try:
        if path.stat().st_size < 132:
            return False
    except OSError:
        return False
    if has_preamble(path):
        return True
    if path.suffix.lower() in {".dcm", ".ima", ".dicom"}:
        return True
    # Preamble-less files (old exports): accept only if a forced read finds an image header.
    return read_header(path) is not None


def has_preamble(path: Path) -> bool:
    """True when the file carries the Part 10 'DICM' marker (so it was written as DICOM)."""
    try:
        return is_dicom(path)
    except OSError:
        return False


def probe(path: Path) -> tuple[Dataset | None, str | None, str | None]:
    """Classify one file: (image header, None, None), (None, non-image object kind, None), (None, None, why it is
    corrupt) or (None, None, None) when it is not DICOM at all."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - unreadable: corrupt if it claims to be DICOM, else just not DICOM
        return (None, None, one_line_reason(exc)) if has_preamble(path) else (None, None, None)
    if "Rows" in ds and "Columns" in ds:
        return ds, None, None
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "") or "")
    if not sop:
        # Random bytes parsed by force=True; a DICM file without any SOP class is a broken header.
        return (None, None, "no SOP class and no image header") if has_preamble(path) else (None, None, None)
    kind = pydicom.uid.UID(sop).name or sop
    if "Image Storage" in kind and "Rows" not in ds:
        return None, None, f"{kind} header ends before Rows/Columns"  # an image cut short inside its header
    return None, kind, None  # DICOMDIR, SR, presentation state, RT plan…: DICOM, but not an image


def read_header(path: Path) -> Dataset | None:
    """Header without pixels, or None when the file is not a readable DICOM image."""
    return probe(path)[0]


def study_key(path: Path) -> str:
    """StudyInstanceUID of a file ('' when empty or unreadable), read without pixels."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["StudyInstanceUID"])
    except Exception:  # noqa: BLE001
        return ""
    return str(ds.get("StudyInstanceUID", "") or "").strip()


def dicom_files(folder: Path) -> list[Path]:
    """Candidate files below ``folder`` (recursive, sorted, hidden entries skipped)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if name.startswith(".") or p.suffix.lower() in _NON_DICOM_SUFFIXES or name.upper() == "DICOMDIR":
                continue
            found.append(p)
    return found
