"""CLI commands of the restoration stage: train, make-pairs, enhance, evaluate, evaluate-realism (thin wrappers; heavy imports inside)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer



def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they are JSON (numbers, lists, true/null), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _train_config(model: str, base: dict[str, Any]) -> Any:
    """The training-config dataclass of ``model`` built from a dict."""
    if model == "ddpm-hq":
        from restoration.train_ddpm_hq import TrainConfig

        return TrainConfig.from_dict(base)
    if model == "munit":
        from restoration.train_munit import MUNITTrainConfig

        return MUNITTrainConfig.from_dict(base)
    from restoration.train_ddpm_lq import DDPMLQTrainConfig

    return DDPMLQTrainConfig.from_dict(base)


def check_enhance_out(images: Path, out: Path) -> None:
    """Refuse an ``enhance`` output folder that would overwrite its inputs or files the tool did not write.

    Allowed: a new folder, an empty one, or an earlier ``enhance`` output (it holds ``enhance.json``). Not a link,
    not the input folder or one inside it (outputs would replace or join the inputs), not a file.
    """
    from restoration.enhance import ENHANCE_INFO_NAME

    if out.is_symlink():
        raise ValueError(f"--out {out}: is a symbolic link; give the real folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if images.is_dir() and out.resolve().is_relative_to(images.resolve()):
        raise ValueError(f"--out {out}: inside the input folder {images}; the outputs would replace or join the inputs")
    if out.is_dir() and any(out.iterdir()) and not (out / ENHANCE_INFO_NAME).is_file():
        raise ValueError(f"--out {out}: not empty and not an enhance output (no {ENHANCE_INFO_NAME}); give a new folder")


def register(app: typer.Typer, fail: Callable[[str], None]) -> None:
    """Add the restoration commands to the main app."""

    @app.command()
    def train(
        model: str = typer.Argument(..., help="ddpm-hq (the restorer), munit or ddpm-lq (the degraders)."),
        config: Optional[Path] = typer.Option(None, "--config", help="JSON training config (fields of the model's TrainConfig); ddpm-hq also takes a named one: cpu, paper-size."),
        hq_dir: list[Path] = typer.Option(
            [], "--hq-dir", help="Real high-quality CXRs (png/jpg/dcm); munit/ddpm-lq: repeatable (NIH, MHH, ...)."
        ),
        lq_dir: list[Path] = typer.Option(
            [], "--lq-dir", help="Low-quality images: our DRRs (munit/ddpm-lq: repeatable), or LQ of a pairs folder."
        ),
        output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o"),
        steps: Optional[int] = typer.Option(None, "--steps", help="max_train_steps"),
        crop_size: Optional[int] = typer.Option(None, "--crop-size", help="munit/ddpm-lq: side of the random training crops."),
        stage: int = typer.Option(1, "--stage", help="ddpm-lq only: 1 (all images) or 2 (LQ fine-tune)."),
        init_from: Optional[Path] = typer.Option(None, "--init-from", help="ddpm-lq stage 2: the stage-1 model; ddpm-hq: a model folder to fine-tune from."),
        overrides: list[str] = typer.Option([], "--set", help="Any config field: --set lq_size=128 --set use_ema=true"),
    ) -> None:
        """Train a restoration model from scratch (accelerate; checkpoint-N, resume, save_pretrained at the end)."""
        from data.settings import SettingsError, read_settings_file
        from pipeline.options import TrainOptions, check_options
        from restoration.training_setup import saved_train_config

        try:
            check_options(TrainOptions, model=model, steps=steps, stage=stage)
        except SettingsError as err:
            fail(str(err))
        try:
            if config is not None and model == "ddpm-hq" and not config.exists() and config.suffix != ".json":
                from restoration.train_ddpm_hq import preset_settings

                base, ignored = preset_settings(str(config)), []  # a named config: --config cpu / paper-size
            else:
                base, ignored = saved_train_config(read_settings_file(config)) if config else ({}, [])
            if ignored:
                typer.echo(f"note: {config}: run record fields ignored (not settings): {', '.join(ignored)}", err=True)
            for key, dirs in (("hq_dir", hq_dir), ("lq_dir", lq_dir)):
                if dirs:  # one folder stays a string (ddpm-hq takes one); several a list (munit, ddpm-lq)
                    base[key] = str(dirs[0]) if len(dirs) == 1 else [str(d) for d in dirs]
            if crop_size is not None:
                base["crop_size"] = crop_size
            if init_from is not None and model == "ddpm-hq":
                base["init_from"] = str(init_from)
            if output_dir is not None:
                base["output_dir"] = str(output_dir)
            if steps is not None:
                base["max_train_steps"] = steps
            base.update(parse_overrides(overrides))
            cfg = _train_config(model, base)
        except (OSError, ValueError, TypeError) as err:
            fail(f"{config or 'train'}: {err}")
        if model == "ddpm-hq":
            from restoration.train_ddpm_hq import train as run
        elif model == "munit":
            from restoration.train_munit import train as run
        else:
            from restoration.train_ddpm_lq import train as run_lq

            def run(c: Any) -> Path:
                return run_lq(c, stage=stage, init_from=str(init_from) if init_from else None)

        try:
            saved = run(cfg)
        except (FileNotFoundError, ValueError) as err:
            fail(str(err))
        typer.echo(f"saved {model} to {saved}", err=True)

    @app.command("make-pairs")
    def make_pairs(
        model: str = typer.Argument(..., help="munit or ddpm-lq: the degrader that turns HQ into LQ."),
        model_dir: Path = typer.Option(..., "--model"),
        hq_dir: list[Path] = typer.Option(..., "--hq-dir", help="Real HQ CXRs (repeatable); HQ = 2x the LQ scale."),
        out: Path = typer.Option(..., "--out", help="Pairs folder: out/hq/NAME.png and out/lq/NAME.png (resumable)."),
        split: str = typer.Option(
            "train", "--split", help="Patient split of --hq-dir: train (for training), held_out (for measuring) or all."
        ),
        seed: int = typer.Option(0, "--seed"),
        strength: float = typer.Option(0.3, "--strength", help="ddpm-lq: SDEdit strength (0 = unchanged)."),
        steps: int = typer.Option(10, "--steps", help="ddpm-lq: sampler steps."),
        style: str = typer.Option("random", "--style", help="munit: random or lq-extracted."),
        lq_dir: list[Path] = typer.Option([], "--lq-dir", help="munit lq-extracted: LQ images to take styles from."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Degrade real HQ CXRs into DRR-like LQ with a trained MUNIT-LQ or DDPM-LQ: (LQ, HQ) pairs for DDPM-HQ."""
        from pipeline.options import MakePairsOptions, check_options

        hq = [str(d) for d in hq_dir]
        try:
            check_options(
                MakePairsOptions, model=model, seed=seed, strength=strength, steps=steps, style=style, split=split
            )
            if model == "munit":
                from restoration.train_munit import make_pairs as run

                written = run(
                    model_dir, hq, out, style=style, seed=seed, lq_dir=[str(d) for d in lq_dir] or None,
                    split=split, progress=progress,
                )  # fmt: skip
            elif model == "ddpm-lq":
                from restoration.train_ddpm_lq import make_pairs as run_lq

                written = run_lq(
                    model_dir, hq, out, strength=strength, steps=steps, seed=seed, split=split, progress=progress
                )
            else:
                fail(f"unknown degrader {model!r}: expected one of munit, ddpm-lq")
        except (FileNotFoundError, ValueError) as err:
            fail(str(err))
        typer.echo(f"wrote pairs to {written}", err=True)

    @app.command()
    def enhance(
        images: Path = typer.Argument(..., help="Folder of DRRs (e.g. a generate output's images/) or CXRs."),
        model_dir: Optional[Path] = typer.Option(
            None, "--model", help="Trained DDPM-HQ folder (default: the model shipped in the package)."
        ),
        out: Path = typer.Option(..., "--out"),
        steps: Optional[int] = typer.Option(None, "--steps", help="1 to 1000 (default: the model's)."),
        scheduler: Optional[str] = typer.Option(
            None, "--scheduler", help="ddpm, ddim or dpmsolver++ (default: the model's)."
        ),
        strength: Optional[float] = typer.Option(
            None, "--strength", help="(0, 1]: 1 = from pure noise, less = from the noised input (default: the model's)."
        ),
        device: str = typer.Option("auto", "--device"),
        seed: int = typer.Option(0, "--seed"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Restore and super-resolve every image of a folder with DDPM-HQ (16-bit PNGs, same names)."""
        from ct_projection.render import pick_device
        from pipeline.enhancer import PACKAGED_MODEL, check_model_folder, resolve_model_dir
        from pipeline.options import EnhanceOptions, check_options
        from restoration.ddpm_hq import ModelNotFoundError
        from restoration.enhance import enhance_folder
        from restoration.preprocess import list_images, load_grayscale

        try:
            check_options(EnhanceOptions, steps=steps, scheduler=scheduler, strength=strength, seed=seed)
            folder = resolve_model_dir(PACKAGED_MODEL if model_dir is None else model_dir)
            check_model_folder(folder)  # a missing folder or a damaged file is named before anything is written
            check_enhance_out(images, out)
            paths = list_images(images)
            if not paths:
                raise ValueError(f"{images}: no png/jpg/jpeg/dcm images to enhance")
            for path in paths:  # every input must read before the first output is written
                load_grayscale(path)
            written = enhance_folder(
                folder, images, out, steps=steps, scheduler=scheduler, device=str(pick_device(device)),
                progress=progress, seed=seed, strength=strength,
            )
        except (ModelNotFoundError, ValueError) as err:
            fail(" ".join(str(err).split()))
        typer.echo(f"enhanced {len(written)} images into {out}", err=True)

    @app.command()
    def evaluate(
        model_dir: Path = typer.Option(..., "--model", help="Trained DDPM-HQ folder."),
        hq_dir: Path = typer.Option(..., "--hq-dir", help="Held-out reference HQ images."),
        lq_dir: Optional[Path] = typer.Option(
            None, "--lq-dir", help="LQ images named like the HQ ones (e.g. a pairs folder's lq/); default: bicubic."
        ),
        steps: int = typer.Option(50, "--steps"),
        scheduler: str = typer.Option("ddim", "--scheduler", help="ddpm, ddim or dpmsolver++."),
        strength: float = typer.Option(
            1.0, "--strength", help="1 = from pure noise; <1 = from the noised bicubic upsample (fewer steps)."
        ),
        samplers: list[str] = typer.Option(
            [], "--sampler", help="Sweep, repeatable: scheduler:steps[:strength], e.g. --sampler ddim:20 "
            "--sampler ddpm:1000 (replaces --scheduler/--steps).",
        ),
        prewindowed: Optional[bool] = typer.Option(
            None, "--prewindowed/--window", help="Images already windowed (pairs folders) or not; default: detected."
        ),
        device: str = typer.Option("auto", "--device"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics here."),
        figure: Optional[Path] = typer.Option(None, "--figure", help="LQ | restored | reference PNG (first sampler)."),
    ) -> None:
        """PSNR/SSIM and seconds per image of DDPM-HQ vs the bicubic input on held-out pairs, one row per sampler.

        LPIPS/FID need downloaded weights and are not run.
        """
        from ct_projection.render import pick_device
        from data.atomic import atomic_write_json
        from restoration.ddpm_hq import ModelNotFoundError
        from restoration.evaluate import SamplerSpec, evaluate_samplers
        from restoration.preprocess import list_images

        from pipeline.options import EvaluateOptions, check_options

        try:
            check_options(EvaluateOptions, steps=steps, scheduler=scheduler, strength=strength)
            specs = [SamplerSpec.parse(t, strength) for t in samplers] or [SamplerSpec(scheduler, steps, strength)]
            hq_paths = list_images(hq_dir)
        except ValueError as err:
            fail(str(err))
        if not hq_paths:
            fail(f"{hq_dir}: no png/jpg/jpeg/dcm images")
        degrade = None
        if lq_dir is not None:
            by_stem = {p.stem: p for p in list_images(lq_dir)}
            missing = [p.name for p in hq_paths if p.stem not in by_stem]
            if missing:
                fail(f"{lq_dir}: no LQ image for {len(missing)} HQ images (e.g. {missing[0]})")
            degrade = [by_stem[p.stem] for p in hq_paths]
        try:
            result = evaluate_samplers(
                model_dir, hq_paths, specs, degrade, device=str(pick_device(device)), figure_path=figure,
                prewindowed=prewindowed,
            )  # fmt: skip
        except (ModelNotFoundError, ValueError) as err:
            fail(str(err))
        b = result["bicubic"]
        typer.echo(f"n={result['n']} held-out pairs")
        typer.echo(f"{'sampler':<22} {'UNet steps':>10} {'PSNR dB':>8} {'SSIM':>7} {'s/image':>9}")
        typer.echo(f"{'bicubic':<22} {'-':>10} {b['psnr']:>8.2f} {b['ssim']:>7.4f} {'-':>9}")
        for r in result["runs"]:
            m = r["model"]
            typer.echo(
                f"{r['sampler']:<22} {r['steps_run']:>10} {m['psnr']:>8.2f} {m['ssim']:>7.4f} "
                f"{r['seconds']['per_image']:>9.3f}"
            )
        if json_out is not None:  # one sampler: its result as before; a sweep: {"n", "bicubic", "runs": [...]}
            atomic_write_json(json_out, result["runs"][0] if len(result["runs"]) == 1 and not samplers else result)

    @app.command("evaluate-realism")
    def evaluate_realism(
        candidates: Path = typer.Argument(..., help="Folder of images to judge (e.g. a generate output's images/)."),
        real: Path = typer.Argument(..., help="Folder of real chest radiographs (patients from its images.csv/data.csv)."),
        out: Path = typer.Option(Path("realism"), "--out", "-o", help="Writes realism.json and realism.png here."),
        size: int = typer.Option(512, "--size", help="Analysis side in px (common field-of-view scale)."),
        epochs: int = typer.Option(8, "--epochs", help="Classifier training epochs (fixed small budget)."),
        repeats: int = typer.Option(
            4, "--repeats", help="Independently seeded classifier runs whose AUCs are averaged (few CTs: ±0.15 each)."
        ),
        max_images: int = typer.Option(200, "--max-images", help="At most this many images per set (seeded choice)."),
        seed: int = typer.Option(0, "--seed"),
        field: str = typer.Option(
            "exposed", "--field", help="exposed (measure inside each image's exposed field, collimated border left "
            "out; default) or whole."
        ),
        real_part: str = typer.Option(
            "all", "--real-part", help="all of REAL, or held-out: only the patients no shipped model trains on."
        ),
    ) -> None:
        """Realism of CANDIDATES vs REAL: classifier AUC, spectrum distance, fine detail, lung histogram, background."""
        from data.atomic import atomic_write_json
        from restoration.realism import RealismConfig
        from restoration.realism import evaluate_realism as run
        from restoration.two_sample import TwoSampleConfig

        from pipeline.options import RealismOptions, check_options

        try:
            check_options(RealismOptions, seed=seed)
            cfg = RealismConfig(
                size=size, max_images=max_images, seed=seed, classifier=TwoSampleConfig(epochs=epochs, repeats=repeats),
                field=field.lower(), real_part=real_part.lower(),
            )  # fmt: skip
            report = run(candidates, real, cfg, figure=out / "realism.png")
        except ValueError as err:
            fail(str(err))
        atomic_write_json(out / "realism.json", report)
        m, c = report["candidates_vs_real"], report["real_vs_real"]
        typer.echo(f"{'figure':<26} {'candidates':>11} {'real/real':>10}")
        for key in ("classifier_auc", "spectrum_distance", "fine_detail_ratio", "lung_histogram_distance", "background_share"):
            typer.echo(f"{key:<26} {m[key]:>11.3f} {c[key]:>10.3f}")
        typer.echo(f"wrote {out / 'realism.json'} and {out / 'realism.png'}", err=True)

    @app.command("evaluate-nodules")
    def evaluate_nodules(
        dataset: Path = typer.Argument(..., help="Output folder of `generate --enhance` (raw DRRs kept in images_drr/)."),
        model_dir: Optional[Path] = typer.Option(None, "--model", help="DDPM-HQ folder (default: the one the dataset used)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary and per-nodule values here."),
    ) -> None:
        """Nodule contrast inside each footprint before vs after restoration (ratio ~1 kept, ~0 erased)."""
        from data.atomic import atomic_write_json
        from pipeline.nodule_preservation import ERASED_BELOW, measure, model_of, summarize
        from restoration.ddpm_hq import ModelNotFoundError

        try:
            preprocess, scale, windowed = model_of(dataset, model_dir)  # the packaged model: recorded by name
            result = summarize(measure(dataset, preprocess, scale=scale, windowed=windowed))
        except (ModelNotFoundError, FileNotFoundError, ValueError) as err:
            fail(str(err))
        if result["nodules"] == 0:
            fail(f"{dataset}: no nodule footprints to measure")
        num = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731  (no finite ratio: zero contrast before)
        typer.echo(
            f"{result['nodules']} nodules ({result['faint']} faint): median contrast ratio after/before "
            f"{num(result['median_contrast_ratio'])}, erased (< {ERASED_BELOW:g}) {100 * (result['erased_fraction'] or 0):.0f}%, "
            f"median conspicuity {result['median_conspicuity_before']:.2f} -> {result['median_conspicuity_after']:.2f}"
        )
        if "twin" in result:  # contrast against the nodule-free twin: the nodule's own signal
            t = result["twin"]
            typer.echo(
                f"against the nodule-free twins: median ratio {num(t['median_contrast_ratio'])}, non-faint nodules "
                f"below {ERASED_BELOW:g}: {t['non_faint_erased']} of {t['non_faint']} (lowest {num(t['non_faint_min_ratio'])})"
            )
        if json_out is not None:
            atomic_write_json(json_out, result)
