"""Synthetic radiographs as DICOM Secondary Capture files: reproducible UIDs, no input identifiers, atomic writes.

Nothing from the input CT reaches these files: patient identity is an alias (default ``SYNTHETIC``), UIDs are
derived from a caller-given seed (e.g. ``"{seed}:{ct_sha256}:{index}"``), and no dates or times are written, so the
same inputs give byte-identical files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data.atomic import DatasetWriteError, atomic_write_bytes

SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
DEFAULT_PATIENT = "SYNTHETIC"
# Fixed implementation identity (under pydicom's UID root) so bytes do not depend on the pydicom version.
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["DiffusionXRay", "implementation", "1"])
IMPLEMENTATION_VERSION_NAME = "DIFFXRAY_1"
# Display orientation of the rendered views (see ct_projection.geometry): row direction, column direction.
_PATIENT_ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LAT": ["P", "F"]}
_LO_MAX = 64  # DICOM LO/PN component length limit


def _check_text(name: str, value: str) -> str:
    """A value for an LO/PN element: ≤ 64 characters, no backslash or control characters."""
    if not value or len(value) > _LO_MAX or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{name} must be ≤ {_LO_MAX} printable characters without '\\', got {value!r}")
    return value


def _uid(seed: str, role: str) -> str:
    """Reproducible UID for one role (study, series, instance) of the image seeded by ``seed``."""
    return generate_uid(entropy_srcs=["DiffusionXRay", role, seed])


def build_secondary_capture(
    image: np.ndarray,
    *,
    uid_seed: str,
    pixel_spacing_mm: float,
    sdd_mm: float,
    sid_mm: float,
    view: str,
    description: str,
    alias: str | None = None,
) -> Dataset:
    """The Secondary Capture dataset (with file meta) of one radiograph; see :func:`write_secondary_capture`."""
    pixels = np.asarray(image)
    if pixels.ndim != 2 or pixels.dtype.kind != "u" or pixels.dtype.itemsize != 2:
        raise ValueError(f"image must be a 2-D uint16 array, got {pixels.dtype} {pixels.shape}")
    if view not in _PATIENT_ORIENTATION:
        raise ValueError(f"unknown view {view!r}: expected one of {', '.join(_PATIENT_ORIENTATION)}")
    if not (pixel_spacing_mm > 0 and sdd_mm > 0 and 0 < sid_mm <= sdd_mm):
        got = f"{pixel_spacing_mm}, {sid_mm}, {sdd_mm}"
        raise ValueError(f"need pixel_spacing_mm > 0 and 0 < sid_mm <= sdd_mm, got {got}")
    patient = _check_text("alias", alias) if alias else DEFAULT_PATIENT
    description = _check_text("description", description)
    study_uid, series_uid, sop_uid = (_uid(uid_seed, role) for role in ("study", "series", "instance"))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, in case an alias or description is not ASCII
    ds.SOPClassUID = SECONDARY_CAPTURE_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    # Patient (type 2 elements present but empty where there is nothing true to say)
    ds.PatientName = patient
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic DRR; no attributes copied from the source CT"
    # General Study: no dates, so the file depends only on the inputs
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYN"
    ds.AccessionNumber = ""
    ds.StudyDescription = "DiffusionXRay synthetic chest radiographs"
    # General Series
    ds.Modality = "OT"  # not acquired by any modality; ConversionType SYN says it is synthetic
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = description
    ds.BodyPartExamined = "CHEST"  # unpaired, so Laterality is rightly absent
    # General Equipment + SC Equipment
    ds.Manufacturer = "DiffusionXRay"
    ds.ConversionType = "SYN"
    ds.SecondaryCaptureDeviceManufacturer = "DiffusionXRay"
    ds.SecondaryCaptureDeviceManufacturerModelName = "DiffDRR digitally reconstructed radiograph"
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = _PATIENT_ORIENTATION[view]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    # Acquisition geometry: spacing at the detector (no magnification correction), distances in mm. The
    # projection attributes are not part of the SC IOD (dciodvfy warns "Standard Extended SOP Class"), but they
    # are what a reader needs to measure in the image.
    spacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.DistanceSourceToDetector = _ds(sdd_mm)
    ds.DistanceSourceToPatient = _ds(sid_mm)
    ds.EstimatedRadiographicMagnificationFactor = _ds(sdd_mm / sid_mm)
    ds.ViewPosition = "LL" if view == "LAT" else view  # DICOM codes a left lateral as LL
    # Image Pixel: 16-bit unsigned grey, larger = brighter
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _ds(value: float) -> str:
    """A decimal string (DS, ≤ 16 characters) with a fixed, platform-independent format."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.8g}"


def encode_secondary_capture(ds: Dataset) -> bytes:
    """Serialise a dataset as a DICOM Part 10 file (explicit VR little endian) in memory."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_secondary_capture(
    path: str | Path,
    image: np.ndarray,
    *,
    uid_seed: str,
    pixel_spacing_mm: float,
    sdd_mm: float,
    sid_mm: float,
    view: str,
    description: str,
    alias: str | None = None,
) -> Path:
    """Atomically write one uint16 HxW radiograph as a DICOM Secondary Capture (byte-identical for the same inputs).

    Args:
        path: destination file.
        image: HxW uint16 pixels (MONOCHROME2).
        uid_seed: what the Study/Series/SOP Instance UIDs are derived from (same seed → same UIDs).
        pixel_spacing_mm: detector pixel pitch (ImagerPixelSpacing and PixelSpacing).
        sdd_mm: source-to-detector distance (DistanceSourceToDetector).
        sid_mm: source-to-isocentre distance (DistanceSourceToPatient).
        view: PA, AP or LAT (ViewPosition PA, AP or LL).
        description: SeriesDescription (≤ 64 characters).
        alias: PatientName/PatientID to use (default "SYNTHETIC"); never taken from the input CT.

    Raises:
        ValueError: bad arguments. DatasetWriteError: the file cannot be written or does not read back.
    """
    ds = build_secondary_capture(
        image,
        uid_seed=uid_seed,
        pixel_spacing_mm=pixel_spacing_mm,
        sdd_mm=sdd_mm,
        sid_mm=sid_mm,
        view=view,
        description=description,
        alias=alias,
    )
    data = encode_secondary_capture(ds)
    # Decode before writing, like write_png16: a file that does not round-trip is never published.
    if not np.array_equal(pydicom.dcmread(io.BytesIO(data)).pixel_array, np.asarray(image)):
        raise DatasetWriteError(path, "DICOM round trip changed pixel values")
    return atomic_write_bytes(path, data)


def read_secondary_capture(path: str | Path) -> np.ndarray:
    """Pixels (HxW uint16) of a Secondary Capture written by :func:`write_secondary_capture`."""
    ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != SECONDARY_CAPTURE_IMAGE_STORAGE:
        raise ValueError(f"{path}: not a Secondary Capture image (SOP class {ds.get('SOPClassUID', 'missing')})")
    return np.asarray(ds.pixel_array, dtype=np.uint16)
