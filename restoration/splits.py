"""The one patient-level split of real CXRs: a held-out part that no shipped model ever trains on.

Every trainer (MUNIT-LQ, DDPM-LQ, DDPM-HQ) takes only the ``train`` part and every held-out measurement
(PSNR/SSIM, realism) only the ``held_out`` part. Membership is a hash of the patient id (NIH ``images.csv``,
MHH ``data.csv``; the file stem when a folder has no table), so it does not depend on which other images are in a
folder, on their order or on a seed: adding images never moves a patient across the line.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

HELD_OUT_FRACTION = 0.35
SPLIT_SALT = "diffusionxray-heldout-v1"  # changing it would change every held-out set: never do so silently


def patient_table(csv_path: str | Path) -> dict[str, str]:
    """File stem → patient id from a metadata CSV (NIH ``images.csv``: image,patient_id; MHH ``data.csv``: image_id,patient_id)."""
    table: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        image_col = next((c for c in ("image", "image_id", "file", "filename") if c in fields), None)
        patient_col = next((c for c in ("patient_id", "patient", "group") if c in fields), None)
        if image_col is None or patient_col is None:
            raise ValueError(
                f"{csv_path}: needs an image column (image, image_id, file, filename) and a patient column "
                f"(patient_id, patient, group); has {', '.join(sorted(fields))}"
            )
        for row in reader:
            table[Path(row[image_col].strip()).stem] = row[patient_col].strip()
    return table


def find_patient_table(folder: Path) -> dict[str, str]:
    """The patient table of a real-CXR folder: images.csv/data.csv in it or up to two levels above (else empty)."""
    for parent in [folder, *list(folder.resolve().parents)[:2]]:
        for name in ("images.csv", "data.csv"):
            if (parent / name).is_file():
                try:
                    return patient_table(parent / name)
                except ValueError:
                    continue
    return {}


def patient_of(path: str | Path) -> str:
    """Patient id of a real CXR from the metadata table beside it (its file stem when there is none)."""
    p = Path(path)
    return find_patient_table(p.parent).get(p.stem, p.stem)


def is_held_out(patient: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether a patient belongs to the held-out part (a salted sha256 of the id, compared with ``fraction``)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction}")
    h = hashlib.sha256(f"{SPLIT_SALT}:{patient}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < fraction


def split_real(
    paths: Sequence[str | Path], fraction: float = HELD_OUT_FRACTION
) -> tuple[list[Path], list[Path]]:
    """(train, held_out) of real CXR files by patient, each in sorted order."""
    tables: dict[Path, dict[str, str]] = {}
    train: list[Path] = []
    held: list[Path] = []
    for p in sorted({Path(x) for x in paths}):
        table = tables.setdefault(p.parent, find_patient_table(p.parent))
        (held if is_held_out(table.get(p.stem, p.stem), fraction) else train).append(p)
    return train, held
