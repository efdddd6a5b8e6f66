"""Decoding a series' pixels into a HU stack (pydicom, GDCM fallback) and saying why a file cannot be decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from ct_projection.dicom.headers import SliceHeader, int_or_none
from ct_projection.volume import CTInputError, one_line_reason


def _decode(path: Path) -> np.ndarray:
    """Stored pixel values of a file as (frames, rows, cols) float32 (pydicom; JPEG 2000 via pylibjpeg)."""
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    return arr.astype(np.float32)


def _decode_with_sitk(path: Path) -> np.ndarray:
    """Fallback decoder for transfer syntaxes pydicom's plugins cannot handle; GDCM already applies the rescale."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    arr = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)
    return arr if arr.ndim == 3 else arr[None]


def load_pixels(source: Path, slices: list[SliceHeader]) -> np.ndarray:
    """(K, rows, cols) HU stack in the order of ``slices``, rescale applied per image."""
    stack = np.empty((len(slices), slices[0].rows, slices[0].columns), dtype=np.float32)
    decoded: dict[Path, tuple[np.ndarray, bool]] = {}
    for k, s in enumerate(slices):
        if s.path not in decoded:
            try:
                decoded.clear()  # keep at most one multi-frame file in memory
                decoded[s.path] = (_decode(s.path), False)
            except Exception as exc:  # noqa: BLE001 - try the second decoder before giving up
                try:
                    decoded[s.path] = (_decode_with_sitk(s.path), True)
                except Exception:  # noqa: BLE001
                    raise CTInputError(source, f"cannot read: {_pixel_problem(s.path, exc)}") from exc
        frames, rescaled = decoded[s.path]
        frame = frames[s.frame or 0]
        if frame.shape != stack.shape[1:]:
            raise CTInputError(
                source, f"cannot read: {s.path.name} has pixel shape {frame.shape}, header says {stack.shape[1:]}"
            )
        stack[k] = frame if rescaled else frame * s.slope + s.intercept
    return stack


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _pixel_problem(path: Path, exc: BaseException) -> str:
    """Why neither decoder could read a file's pixels, in words (missing, unsupported syntax, truncated)."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # noqa: BLE001
        return f"{path.name} is truncated or corrupt ({one_line_reason(err)})"
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        return f"{path.name} has no pixel data (a header-only or cut-short file)"
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        uid = pydicom.uid.UID(ts)
        if not uid.is_transfer_syntax or not _has_decoder(uid):
            name = uid.name if uid.is_transfer_syntax else "unknown or private"
            return (
                f"unsupported transfer syntax {ts} ({name}) in {path.name}: "
                "no installed decoder (pydicom, pylibjpeg, GDCM) can read it"
            )
        if not uid.is_compressed and "PixelData" in ds:
            frames = int_or_none(ds.get("NumberOfFrames")) or 1
            samples = int_or_none(ds.get("SamplesPerPixel")) or 1
            bits = int_or_none(ds.get("BitsAllocated")) or 16
            need = int(ds.Rows) * int(ds.Columns) * frames * samples * bits // 8
            have = len(ds.PixelData)
            if have < need:
                return f"{path.name} is truncated: pixel data has {have} of {need} bytes"
    return f"pixel data of {path.name}: {one_line_reason(exc)}"


def _has_decoder(uid: pydicom.uid.UID) -> bool:
    """Whether pydicom has a usable decoder (plugin installed) for a transfer syntax."""
    try:
        from pydicom.pixels import get_decoder  # pydicom ≥ 3

        return bool(get_decoder(uid).is_available)
    except Exception:  # noqa: BLE001 - pydicom raises for syntaxes it has no decoder class for
        return False
