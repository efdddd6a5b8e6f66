"""Inserted nodules stay clear of real tumours: the radiologist boxes of Lung-PET-CT-Dx A0001 (../shared/data)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import SHARED_DATA

STUDY = SHARED_DATA / "ct" / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990"
BOXES = SHARED_DATA / "ct" / "lung-pet-ct-dx" / "annotations" / "A0001"

pytestmark = [
    pytest.mark.slow,  # real study, lung segmentation and placement at full resolution
    pytest.mark.skipif(not (STUDY.is_dir() and BOXES.is_dir()), reason="../shared/data is not present"),
]


def tumour_boxes_ras(series_uid: str) -> list[np.ndarray]:
    """Each annotated slice's box as a (2, 3) RAS world-mm box, one slice thick, for the slices of ``series_uid``."""
    headers = {}
    for path in STUDY.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SeriesInstanceUID == series_uid:
            headers[ds.SOPInstanceUID] = ds
    boxes = []
    for xml in sorted(BOXES.glob("*.xml")):
        ds = headers.get(xml.stem)
        if ds is None:
            continue
        bb = ET.parse(xml).getroot().find("object/bndbox")
        x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        ipp = np.array(ds.ImagePositionPatient, float)
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        dr, dc = (float(v) for v in ds.PixelSpacing)  # (between rows, between columns)
        half = float(ds.SliceThickness) / 2 * np.cross(row_dir, col_dir)
        corners = [ipp + x * dc * row_dir + y * dr * col_dir + s * half
                   for x in (x0, x1) for y in (y0, y1) for s in (-1, 1)]  # fmt: skip
        ras = np.array(corners) * [-1, -1, 1]  # DICOM LPS → RAS
        boxes.append(np.stack([ras.min(0), ras.max(0)]))
    return boxes


def test_nodules_never_land_on_the_real_tumour() -> None:
    """36 sampled nodules on the real CT keep clear of every annotated tumour slice box (boxes include some lung
    around the tumour, so this is conservative; a mirrored or shifted affine would put nodules into it)."""
    from ct_projection.ingest import load_ct
    from ct_projection.lungs import lung_mask
    from ct_projection.nodules import NoduleConfig, NoduleSampler

    vol = load_ct(STUDY)
    uid = next(
        pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
        for p in STUDY.rglob("*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber == vol.info["series_number"]
    )
    boxes = tumour_boxes_ras(uid)
    assert len(boxes) >= 10  # the annotated slices of this series
    tumour = np.stack([np.min([b[0] for b in boxes], 0), np.max([b[1] for b in boxes], 0)])
    # The tumour lies inside the scanned volume, where the sampler could have put nodules.
    lo, hi = vol.voxel_to_world(np.array([[0, 0, 0], np.array(vol.shape) - 1]))
    assert np.all(tumour[0] > np.minimum(lo, hi)) and np.all(tumour[1] < np.maximum(lo, hi))

    lungs = lung_mask(vol)
    sampler = NoduleSampler(NoduleConfig(count_range=(3, 3)))
    sampler.prepare(vol, lungs)
    placed = 0
    for seed in range(12):
        for p in sampler.get_params(np.random.default_rng(seed), vol, lungs):
            placed += 1
            c, r = np.asarray(p.centre_world_mm), p.diameter_mm / 2
            for b in boxes:  # sphere of the nodule's nominal radius vs each annotated slice's box
                nearest = np.clip(c, b[0], b[1])
                assert np.linalg.norm(c - nearest) > r, f"nodule at {c} (r={r:.1f} mm) overlaps the tumour box {b}"
    assert placed >= 30
