"""Writing a finished :class:`~pipeline.sample.Sample`: format writers, its record and its manifest entry.

A writer turns a sample into zero or more :class:`Output`s (a dataset-relative file name, how to write it, and the
record attribute that names it). ``WRITERS`` is the one list of them: a new per-sample output format is one writer
appended there (its ``folder`` is also what ``--restart`` clears). :func:`publish` records every path before writing
it, removes a failed sample's files, and returns the image record plus the manifest entry with each file's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from data.atomic import sha256_file
from data.records import ImageRecord

if TYPE_CHECKING:
    import numpy as np

    from pipeline.config import GenerateConfig
    from pipeline.sample import Sample

RECORD_FILE = "file_name"  # an Output with this attribute is the record's image (ImageRecord.file_name)


@dataclass(frozen=True)
class Output:
    """One file of a sample.

    Args:
        name: path relative to the dataset root.
        write: writes the file (atomically) at the given absolute path.
        attribute: record attribute that names the file (``RECORD_FILE`` for the record's own image), or None.
        extra: further record attributes that come with this file (e.g. the display window it was made with).
    """

    name: str
    write: Callable[[Path], Any]
    attribute: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Writer(Protocol):
    """A per-sample output format."""

    folder: str  # dataset-relative folder it writes into (removed by --restart)

    def __call__(self, sample: Sample, config: GenerateConfig) -> list[Output]:
        """The files this format makes of ``sample`` (none when it does not apply)."""
        ...


@dataclass(frozen=True)
class Png16Writer:
    """A named image of the sample as a 16-bit greyscale PNG, ``<folder>/<stem>.png``, when the sample has it."""

    image: str
    folder: str
    attribute: str | None

    def __call__(self, sample: Sample, config: GenerateConfig) -> list[Output]:
        """One PNG, or nothing when the sample has no image of that name."""
        from data.images import write_png16

        pixels = sample.images.get(self.image)
        if pixels is None:
            return []
        return [Output(f"{self.folder}/{sample.stem}.png", lambda path: write_png16(path, pixels), self.attribute)]


@dataclass(frozen=True)
class DicomWriter:
    """The sample's image as a DICOM Secondary Capture (``--dicom``), UIDs derived from seed, CT and index."""

    folder: str = "dicom"

    def __call__(self, sample: Sample, config: GenerateConfig) -> list[Output]:
        """One .dcm when the run asks for DICOM."""
        if not config.dicom:
            return []
        from data.dicom_out import write_secondary_capture

        pixels: np.ndarray = sample.images["image"]
        attrs = sample.attributes
        geometry = config.geometry

        def write(path: Path) -> None:
            write_secondary_capture(
                path,
                pixels,
                uid_seed=f"{config.seed}:{sample.ct_sha256}:{sample.index}",
                pixel_spacing_mm=attrs["pixel_spacing_mm"],
                sdd_mm=geometry.sdd_mm,
                sid_mm=geometry.sid_mm,
                view=geometry.view,
                description=f"DiffusionXRay synthetic {geometry.view} radiograph",
                alias=attrs.get("alias"),
            )

        return [Output(f"{self.folder}/{sample.stem}.dcm", write)]


@dataclass(frozen=True)
class DetectorWriter:
    """8-bit detector copies of the image and its twin, windowed to the image's lung field (one shared window)."""

    folder: str = "detector"

    def __call__(self, sample: Sample, config: GenerateConfig) -> list[Output]:
        """The detector image (+ its display window as a record attribute) and the nodule-free one."""
        from ct_projection.lung_field import resize_mask
        from data.detector import WINDOW_PERCENTILES, detector_name, encode_uint8, lung_window
        from data.images import write_png8

        pixels = sample.images["image"]
        lung_px = resize_mask(sample.masks["lung_field"], pixels.shape)
        window = lung_window(pixels, lung_px)
        facts = {
            "lo": window[0],
            "hi": window[1],
            "units": "pixel values of file_name (uint16)",
            "percentiles": list(WINDOW_PERCENTILES),
            "region": "lung field (projected lung mask)",
            "lung_field_px": int(lung_px.sum()),
        }
        outputs = [
            Output(
                detector_name(sample.stem),
                lambda path: write_png8(path, encode_uint8(pixels, window)),
                "detector_file",
                {"detector_window": facts},
            )
        ]
        free = sample.images.get("nodule_free")
        if free is not None:  # the twin shares the window, so the pair still differs only where the nodules are
            outputs.append(
                Output(
                    detector_name(sample.stem, nodule_free=True),
                    lambda path: write_png8(path, encode_uint8(free, window)),
                    "detector_nodule_free_file",
                )
            )
        return outputs


# Written in this order; the record's image comes after the raw DRRs and before the twin, detector copies, DICOM.
WRITERS: list[Writer] = [
    Png16Writer("drr", "images_drr", "drr_file"),
    Png16Writer("drr_nodule_free", "images_drr_nodule_free", "drr_nodule_free_file"),
    Png16Writer("image", "images", RECORD_FILE),
    Png16Writer("nodule_free", "images_nodule_free", "nodule_free_file"),
    # The physical (line-integral) images behind a clinical presentation (--display clinical).
    Png16Writer("physical", "images_physical", "physical_file"),
    Png16Writer("physical_nodule_free", "images_physical_nodule_free", "physical_nodule_free_file"),
    DetectorWriter(),
    DicomWriter(),
]


def code_version() -> str:
    """The installed DiffusionXRay version (recorded per manifest entry)."""
    try:
        return metadata.version("diffusionxray")
    except metadata.PackageNotFoundError:
        return "unknown"


def remove_quietly(paths: list[Path]) -> None:
    """Best-effort removal of a failed sample's files (no manifest record refers to them) and of emptied folders."""
    from data.confine import remove_empty_dir, remove_file

    for path in paths:
        try:
            remove_file(path)  # a regular file inside the dataset folder only: never through a link
        except OSError:
            pass
    for folder in sorted({p.parent for p in paths}, reverse=True):
        remove_empty_dir(folder)  # only when empty: an earlier sample's files keep their folder


def publish(
    sample: Sample, config: GenerateConfig, out_dir: Path, writers: Sequence[Writer] | None = None
) -> tuple[ImageRecord, dict[str, Any]]:
    """Write ``sample`` with every writer (default ``WRITERS``); returns its image record and manifest entry.

    If any write fails, the files of this sample written so far are removed before the error propagates.
    """
    writers = WRITERS if writers is None else writers
    written: list[Path] = []  # recorded before each write, so a failed sample leaves nothing behind
    files: dict[str, str] = {}
    file_attrs: dict[str, str] = {}
    file_name = None
    try:
        for writer in writers:
            for output in writer(sample, config):
                target = out_dir / output.name
                written.append(target)
                output.write(target)
                files[output.name] = sha256_file(target)
                if output.attribute == RECORD_FILE:
                    file_name = output.name
                elif output.attribute is not None:
                    file_attrs[output.attribute] = output.name
                file_attrs.update(output.extra)
        if file_name is None:
            raise RuntimeError(f"no writer wrote the image of sample {sample.stem}")
    except BaseException:
        remove_quietly(written)
        raise
    height, width = sample.images["image"].shape
    record = ImageRecord(file_name, int(width), int(height), sample.labels, {**sample.attributes, **file_attrs})
    entry = {
        "ct_sha256": sample.ct_sha256,
        "sample_index": sample.index,
        "seed": config.seed,
        "config_fingerprint": config.fingerprint(),
        "code_version": code_version(),
        "files": files,
        "record": record.to_json(),
    }
    return record, entry
