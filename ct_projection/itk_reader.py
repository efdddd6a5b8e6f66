"""NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd) via SimpleITK, with the header checked before any voxel is read.

ITK reports a missing data file as "No such file or directory" on the *header*, a truncated one the same way or
as a chain of ``[nrrd]`` lines, and bad geometry with object addresses; so the geometry (spacing, direction,
origin), the data file named by a detached header and the number of stored bytes are checked here first, and what
ITK still raises is cut down to its reason.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ct_projection.grid import check_affine
from ct_projection.volume import CTInputError, check_declared_shape, clean_text

HEADER_BYTES = 65536  # NRRD/MetaImage headers are text at the start of the file; this is plenty
# Header fields that place voxels. MetaIO reads 'nan' in them as 0 and silently drops the numbers after it, so they
# are checked here: every number must be finite.
GEOMETRY_FIELDS = {
    "offset", "origin", "position", "elementspacing", "transformmatrix", "rotation", "orientation", "dimsize",
    "space origin", "space directions", "spacings", "sizes",
}


def read_itk(p: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[Path]]:
    """(array (I, J, K), voxel → LPS affine, info, files read) of a NRRD or MetaImage file."""
    import SimpleITK as sitk

    problem = _geometry_field_problem(_header(p)[0])
    if problem:
        raise CTInputError(p, problem)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except Exception as exc:  # noqa: BLE001 - ITK raises RuntimeError with a multi-line dump
        raise CTInputError(p, f"cannot read: {_header_problem(p) or itk_reason(exc)}") from exc
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise CTInputError(p, f"expected a scalar CT, got {reader.GetNumberOfComponents()} components per voxel")
    check_declared_shape(p, size + (1,) * (3 - len(size)))
    if len(size) != 3:
        raise CTInputError(p, f"expected a 3D volume, got a {len(size)}D image")
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        shown = " × ".join(f"{s:g}" for s in spacing)
        raise CTInputError(p, f"voxel spacing {shown} mm in the header: every spacing must be a positive number")
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3) * spacing
    affine[:3, 3] = reader.GetOrigin()
    check_affine(p, affine, "header geometry (direction/origin)")
    component = sitk.Image([1, 1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    files = [p] + _detached_files(p)
    problem = _data_problem(p, math.prod(size) * component)
    if problem:
        raise CTInputError(p, f"cannot read: {problem}")
    try:
        img = reader.Execute()
    except Exception as exc:  # noqa: BLE001
        raise CTInputError(p, f"cannot read: {itk_reason(exc)}") from exc
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    fmt = "NRRD" if p.suffix.lower() in (".nrrd", ".nhdr") else "MetaImage"
    return data, affine, {"format": fmt, "modality": "unknown (no modality tag)"}, files


def itk_reason(exc: BaseException) -> str:
    """ITK's reason without its source paths, object addresses and ``[nrrd]`` call chain."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]")]
    if nrrd:  # teem's innermost message is the specific one
        lines = [re.sub(r"^\[nrrd\]\s*\w+:\s*", "", nrrd[-1])]
    text = " ".join(re.sub(r"^(itk::)?(ITK )?ERROR:\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", ln) for ln in lines)
    text = re.sub(r"\s+", " ", text).strip() or type(exc).__name__
    return text[:160] + "…" if len(text) > 160 else text


def _header(p: Path) -> tuple[dict[str, str], int]:
    """Header fields (lower-case keys) and the header's length in bytes (where attached data starts)."""
    with p.open("rb") as fh:
        head = fh.read(HEADER_BYTES).decode("latin-1")
    fields: dict[str, str] = {}
    if p.suffix.lower() in (".nrrd", ".nhdr"):
        end = head.find("\n\n")
        end = len(head) if end < 0 else end + 2
        for line in head[:end].splitlines()[1:]:
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[key.strip().lower()] = value.lstrip("=").strip()
        return fields, end
    end = 0
    for line in head.splitlines(keepends=True):
        end += len(line)
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    return fields, end


def _geometry_field_problem(fields: dict[str, str]) -> str | None:
    """A geometry field of the header holding something other than finite numbers (NaN, Inf, words)."""
    for key, value in fields.items():
        if key not in GEOMETRY_FIELDS:
            continue
        tokens = [t for t in re.split(r"[\s,()]+", value) if t and t.lower() != "none"]
        numbers = [_number(t) for t in tokens]
        if any(n is None or not math.isfinite(n) for n in numbers):
            shown = clean_text(value, 80)
            return f"header field '{key}' = '{shown}' is not all finite numbers: the voxel positions are undefined"
    return None


def _data_name(fields: dict[str, str]) -> str | None:
    """The data file a header names ('LOCAL'/None when attached; lists and patterns are not checked)."""
    name = fields.get("elementdatafile") or fields.get("data file") or fields.get("datafile")
    if name is None or name.upper() == "LOCAL" or name.upper().startswith("LIST") or "%" in name or " " in name:
        return None
    return name


def _detached_files(header: Path) -> list[Path]:
    """Data file named by an .mhd/.nhdr header, so the checksum covers the voxels too."""
    if header.suffix.lower() not in (".mhd", ".nhdr"):
        return []
    name = _data_name(_header(header)[0])
    return [header.parent / name] if name and (header.parent / name).is_file() else []


def _header_problem(p: Path) -> str | None:
    """Why ITK could not parse a header, when it is a missing data file (ITK blames the header for it)."""
    try:
        return _data_problem(p, 0)
    except OSError:
        return None


def _data_problem(p: Path, need: int) -> str | None:
    """A missing data file, or fewer stored bytes than the header declares (uncompressed data only)."""
    fields, header_len = _header(p)
    name = _data_name(fields)
    if name is not None:
        data = p.parent / name
        if not data.is_file():
            return f"data file '{name}' named by the header is missing (expected next to {p.name})"
        have = data.stat().st_size - max(int(_number(fields.get("headersize")) or 0), 0)
    elif p.suffix.lower() in (".mhd", ".nhdr"):
        return None  # a list or pattern of data files: ITK checks those
    else:
        have = p.stat().st_size - header_len
    compressed = fields.get("compresseddata", "false").lower() == "true" or fields.get("encoding", "raw") not in (
        "raw",
        "",
    )
    if not compressed and have < need:
        return f"file is truncated: its voxel data has {max(have, 0)} of the {need} bytes the header declares"
    return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
