"""DDPMHQPipeline: diffusers folder round trip, config carried in the folder, space_to_depth, tiling, bad folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from restoration.ddpm_hq import (
    DDPMHQConfig,
    ModelFolderError,
    ModelNotFoundError,
    build_unet,
    save_model,
    unet_forward,
)
from restoration.ddpm_hq_sampling import restore
from restoration.pipeline_ddpm_hq import DDPMHQPipeline, load_pipeline, save_pipeline
from restoration.pretrained import packaged_model_dir


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def tiny_cfg(**kw) -> DDPMHQConfig:
    """The default (compact, space_to_depth 4, attention-free) architecture, shrunk."""
    base = dict(lq_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                preprocess={"size": 32, "low_pct": 1.0, "high_pct": 99.0})  # fmt: skip
    return DDPMHQConfig(**{**base, **kw})


def toy_image(h: int = 40, w: int = 24, seed: int = 0) -> np.ndarray:
    """A smooth radiograph-like [0, 1] image with some texture."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.3 * np.sin(6 * x + 3 * y) + 0.1 * np.random.default_rng(seed).random((h, w))
    return img.clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_cfg()
    folder = tmp_path_factory.mktemp("pipe") / "ddpm-hq"
    save_pipeline(folder, build_unet(cfg).eval(), cfg, num_inference_steps=4, strength=0.5)
    return folder


def test_round_trip_same_output_and_config(pipe_dir, tmp_path):
    pipe = load_pipeline(pipe_dir)
    index = json.loads((pipe_dir / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMHQPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    for key, value in {"lq_size": 16, "scale": 2, "space_to_depth": 4, "residual_scale": 4.0,
                       "prediction_type": "sample", "num_inference_steps": 4, "strength": 0.5}.items():  # fmt: skip
        assert index[key] == value and pipe.config[key] == value, key
    assert index["preprocess"] == {"size": 32, "low_pct": 1.0, "high_pct": 99.0}
    img = toy_image()
    a = pipe(img, generator=torch.Generator().manual_seed(3)).images[0]
    # callers unpack nothing: the folder says the input is resized to longer side 16 and restored 2x
    assert a.shape == pipe.output_size(img.shape) == (32, 20) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    pipe.save_pretrained(tmp_path / "again", safe_serialization=True)
    again = load_pipeline(tmp_path / "again")
    b = again(img, generator=torch.Generator().manual_seed(3)).images[0]
    np.testing.assert_array_equal(a, b)  # same weights, same schedule, same generator: the same image
    assert not np.array_equal(a, pipe(img, generator=torch.Generator().manual_seed(4)).images[0])
    # defaults come from the config; explicit steps/strength override them
    c = pipe(img, num_inference_steps=4, strength=0.5, generator=torch.Generator().manual_seed(3)).images[0]
    np.testing.assert_array_equal(a, c)
    # a list of generators gives each image its own noise, independent of its neighbours
    d = pipe([img, toy_image(seed=1)], generator=[torch.Generator().manual_seed(3), torch.Generator().manual_seed(9)])
    np.testing.assert_array_equal(d.images[0], a)
    t = pipe(np.stack([img, img]), generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert isinstance(t[0], torch.Tensor) and np.array_equal(t[0].numpy(), a) and not torch.equal(t[0], t[1])


def test_sampler_swap_and_steps(pipe_dir):
    pipe = load_pipeline(pipe_dir)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    img = toy_image()
    ddim = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
    pipe.set_sampler("dpmsolver++")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.num_train_timesteps == 1000 and pipe.scheduler.config.prediction_type == "sample"
    dpm = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
    assert dpm.shape == ddim.shape and np.isfinite(dpm).all()
    calls = []
    real = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    pipe(img, num_inference_steps=8, strength=0.5, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4  # the default schedule: <= 4 UNet evaluations per image
    with pytest.raises(ValueError, match="strength"):
        pipe(img, strength=1.5)
    with pytest.raises(ValueError, match=r"images\[0\]: values must be finite and in \[0, 1\]"):
        pipe(img * 3)
    with pytest.raises(ValueError, match="expected a 2-D grayscale image"):
        pipe([np.zeros((4, 4, 3))])


def test_default_unet_attention_free_and_paper_preset():
    cfg = DDPMHQConfig()
    assert cfg.space_to_depth == 4 and not cfg.has_attention and cfg.lq_size == 512 and cfg.hq_size == 1024
    unet = build_unet(cfg)
    names = {type(m).__name__ for m in unet.modules()}
    assert not {n for n in names if "Attn" in n or "Attention" in n}, names
    assert unet.config.in_channels == 32 and unet.config.out_channels == 16 and unet.config.sample_size == 256
    assert all(c % cfg.norm_num_groups == 0 for c in cfg.block_out_channels)
    paper = DDPMHQConfig.preset("paper", lq_size=64)
    assert paper.space_to_depth == 1 and paper.has_attention and paper.block_out_channels == (64, 128, 256, 256)
    assert any("Attention" in type(m).__name__ for m in build_unet(paper).modules())
    with pytest.raises(ValueError, match="expected one of compact, paper"):
        DDPMHQConfig.preset("huge")


def test_space_to_depth_forward_shapes_and_pixel_grid():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    unet = build_unet(cfg).eval()
    x = torch.randn(2, 1, 32, 24)
    out = unet_forward(unet, x, x, torch.tensor([10]).expand(2))
    assert out.shape == (2, 1, 32, 24)
    # the UNet saw unshuffled inputs: 2·16 channels at 8 x 6
    seen = []
    hook = unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        unet_forward(unet, x, x, torch.tensor([10]).expand(2))
    hook.remove()
    assert seen == [(2, 32, 8, 6)]
    # an input whose side is no multiple of s * 2 is padded by restore and cropped back
    lq = torch.rand(1, 1, 9, 7) * 2 - 1
    from restoration.ddpm_hq import make_scheduler

    assert restore(unet, make_scheduler("ddim", cfg), lq, 2, torch.Generator().manual_seed(0),
                   residual_scale=4.0).shape == (1, 1, 18, 14)  # fmt: skip


class PointwiseUNet(torch.nn.Module):
    """A UNet stand-in with no spatial context (1x1 conv on the unshuffled channels): tiling must be exact for it."""

    def __init__(self, s: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2 * s * s, s * s, 1)
        self.config = SimpleNamespace(in_channels=2 * s * s, out_channels=s * s, block_out_channels=(8, 8))
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=torch.tanh(self.conv(x)) * (1 + t.float().view(-1, 1, 1, 1) / 1000))


def test_tiling_exact_for_a_local_model_and_close_for_groupnorm():
    from restoration.ddpm_hq import make_scheduler

    cfg = tiny_cfg()
    lq = torch.from_numpy(toy_image(24, 20) * 2 - 1)[None, None]  # HQ 48 x 40
    sched = make_scheduler("ddim", cfg)
    local = PointwiseUNet(4)
    full = restore(local, sched, lq, 4, torch.Generator().manual_seed(1), strength=0.5, residual_scale=4.0)
    tiled = restore(local, sched, lq, 4, torch.Generator().manual_seed(1), strength=0.5, residual_scale=4.0,
                    tile=16, overlap=8)  # fmt: skip
    # tiles start on the unshuffle grid and the blending weights sum to one: exact up to float rounding
    assert torch.allclose(tiled, full, atol=1e-5)
    # the real attention-free UNet: GroupNorm normalises per tile, so tiles differ a little (no seams by blending)
    torch.manual_seed(0)
    unet = build_unet(cfg).eval()
    full = restore(unet, sched, lq, 4, torch.Generator().manual_seed(1), strength=0.5, residual_scale=4.0)
    covering = restore(unet, sched, lq, 4, torch.Generator().manual_seed(1), strength=0.5, residual_scale=4.0,
                       tile=64)  # fmt: skip
    assert torch.equal(covering, full)  # a tile covering the image is the untiled path
    tiled = restore(unet, sched, lq, 4, torch.Generator().manual_seed(1), strength=0.5, residual_scale=4.0,
                    tile=32, overlap=16)  # fmt: skip
    other_seed = restore(unet, sched, lq, 4, torch.Generator().manual_seed(2), strength=0.5, residual_scale=4.0)
    diff = (tiled - full).abs().mean().item()
    # random weights exaggerate it (their output is large, unstructured residual): measured 0.040 in [-1, 1]
    # at 32 px tiles / 16 px overlap on this 48 x 40 image, half of what another noise draw changes (0.078)
    assert diff < 0.75 * (other_seed - full).abs().mean().item() and diff < 0.06


def _corrupt_cases(root: Path, good: Path) -> dict[str, tuple[Path, type, str]]:
    import shutil

    cases: dict[str, tuple[Path, type, str]] = {}
    cases["absent"] = (root / "absent", ModelNotFoundError, "folder does not exist")
    (root / "empty").mkdir()
    cases["empty"] = (root / "empty", ModelNotFoundError, "missing model_index.json")
    trunc = shutil.copytree(good, root / "trunc")
    w = trunc / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    cases["truncated"] = (trunc, ModelFolderError, "corrupt or truncated weights")
    noweights = shutil.copytree(good, root / "noweights")
    (noweights / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    cases["no weights"] = (noweights, ModelNotFoundError, "missing unet/diffusion_pytorch_model.safetensors")
    badjson = shutil.copytree(good, root / "badjson")
    (badjson / "model_index.json").write_text("{not json")
    cases["bad json"] = (badjson, ModelFolderError, "model_index.json: not valid JSON")
    other = shutil.copytree(good, root / "other")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    cases["other pipeline"] = (other, ModelFolderError, "not a DDPMHQPipeline folder")
    wrong = shutil.copytree(good, root / "wrong")
    (wrong / "model_index.json").write_text(json.dumps({**index, "space_to_depth": 2}))
    cases["wrong config"] = (wrong, ModelFolderError, "does not match space_to_depth 2")
    return cases


def test_missing_or_corrupt_folder_is_one_line(pipe_dir, tmp_path):
    for name, (folder, kind, text) in _corrupt_cases(tmp_path, pipe_dir).items():
        with pytest.raises(kind) as err:
            load_pipeline(folder)
        msg = str(err.value)
        assert "\n" not in msg and str(folder) in msg and text in msg, (name, msg)
        assert err.value.__cause__ is None or name == "absent", name


def test_old_folder_format_and_old_configs_load(tmp_path):
    # a model saved before space_to_depth/mid_attention existed: its config lacks them
    old = DDPMHQConfig(lq_size=8, space_to_depth=1, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, attention_levels=(False, True), mid_attention=True,
                       prediction_type="epsilon", residual_scale=0.0)  # fmt: skip
    torch.manual_seed(0)
    save_model(tmp_path / "old", build_unet(old).eval(), old)
    saved = json.loads((tmp_path / "old" / "ddpm_hq_config.json").read_text())
    for key in ("space_to_depth", "mid_attention"):
        saved.pop(key)
    (tmp_path / "old" / "ddpm_hq_config.json").write_text(json.dumps(saved))
    loaded = DDPMHQConfig.load(tmp_path / "old")
    assert loaded.space_to_depth == 1 and loaded.mid_attention and loaded == old
    pipe = load_pipeline(tmp_path / "old")
    assert pipe.config.space_to_depth == 1 and pipe.unet.config.in_channels == 2
    out = pipe(toy_image(16, 16), num_inference_steps=2, strength=1.0, generator=torch.Generator().manual_seed(0))
    assert out.images[0].shape == (16, 16) and np.isfinite(out.images[0]).all()


def test_packaged_model_dir(tmp_path, pipe_dir):
    import shutil

    assert packaged_model_dir(tmp_path) is None  # no folder
    folder = shutil.copytree(pipe_dir, tmp_path / "ddpm-hq")
    assert packaged_model_dir(tmp_path) == folder
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert packaged_model_dir(tmp_path) is None  # a folder without weights ships nothing
    shipped = packaged_model_dir()
    assert shipped is not None, "the package ships its default restorer (restoration/pretrained/ddpm-hq)"
    weights = shipped / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 50 * 2**20 and "## Held-out metrics" in (shipped / "README.md").read_text()
    pipe = load_pipeline(shipped)  # the shipped model loads with local files only and restores a small image
    assert (pipe.config.lq_size, pipe.config.scale) == (512, 2) and pipe.config.anchor_sigma > 0
    assert max(1, round(pipe.config.num_inference_steps * pipe.config.strength)) <= 4  # few-step default sampler
    img = toy_image(64, 48)
    out = pipe(img, num_inference_steps=2, strength=0.5, generator=torch.Generator().manual_seed(0)).images[0]
    again = pipe(img, num_inference_steps=2, strength=0.5, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.shape == pipe.output_size((64, 48)) and np.isfinite(out).all() and np.array_equal(out, again)


def test_enhance_folder_and_sampler_table_on_crops(pipe_dir, tmp_path):
    from data.images import read_png16, write_png16
    from restoration.enhance import enhance_folder
    from restoration.evaluate import SAMPLER_TABLE, SamplerSpec, evaluate_samplers

    write_png16(tmp_path / "in" / "a.png", np.rint(toy_image(40, 24) * 65535).astype(np.uint16))
    out = enhance_folder(pipe_dir, tmp_path / "in", tmp_path / "out", progress=False)
    info = json.loads((tmp_path / "out" / "enhance.json").read_text())
    # the folder's own sampler and schedule are used when none is given
    assert (info["scheduler"], info["steps"], info["strength"], info["tile"]) == ("ddim", 4, 0.5, None)
    pipe = load_pipeline(pipe_dir)
    from restoration.preprocess import load_grayscale

    expected = pipe(load_grayscale(tmp_path / "in" / "a.png"), generator=torch.Generator().manual_seed(0)).images[0]
    got = read_png16(out[0]).astype(np.float64) / 65535
    assert got.shape == (32, 20) and np.abs(got - expected).max() <= 0.5 / 65535 + 1e-6
    hq = [write_png16(tmp_path / "hq" / f"{i}.png", np.rint(toy_image(48, 48, i) * 65535).astype(np.uint16))
          for i in range(2)]  # fmt: skip
    specs = [SamplerSpec.parse(t) for t in ("ddim:2", "default", "ddpm:12")]
    r = evaluate_samplers(pipe_dir, hq, specs, crop=16, whole_image_timing=True, max_timed_evals=4)
    assert r["crop"] == 16 and [x["sampler"] for x in r["runs"]] == ["ddim:2", "ddim:4:0.5", "ddpm:12"]
    assert [x["steps_run"] for x in r["runs"]] == [2, 2, 12]
    assert all(len(x["per_image"]) == 2 and np.isfinite(x["model"]["psnr"]) for x in r["runs"])
    whole = [x["whole_image"] for x in r["runs"]]
    assert all(w["size"] == [32, 32] and w["seconds"] > 0 for w in whole)  # whole images at the model's HQ size
    assert [w["measured"] for w in whole] == [True, True, False]  # 12 evaluations > 4: estimated
    assert whole[2]["seconds"] == pytest.approx(12 * whole[2]["seconds_per_forward"])
    again = evaluate_samplers(pipe_dir, hq, specs[:1], crop=16)
    assert again["runs"][0]["model"] == r["runs"][0]["model"]  # fixed crops, fixed seed: the same numbers
    with pytest.raises(ValueError, match="crop 12: must be a multiple of 8"):
        evaluate_samplers(pipe_dir, hq, specs[:1], crop=12)
    assert SAMPLER_TABLE[0] == "ddpm:1000" and "default" in SAMPLER_TABLE
    # an anchored model is measured as it restores: its output anchored to the bicubic-upsampled LQ
    import shutil

    from restoration.pipeline_ddpm_hq import configure_sampler

    anchored = configure_sampler(shutil.copytree(pipe_dir, tmp_path / "anchored"), anchor_sigma=2.0)
    a = evaluate_samplers(tmp_path / "anchored", hq, specs[:1], crop=16)
    assert a["anchor_sigma"] == 2.0 and r["anchor_sigma"] == 0.0 and anchored.config.anchor_sigma == 2.0
    # the random tiny UNet's residual is far off; keeping the input's coarse part brings it near the bicubic input
    gap = lambda res: abs(res["runs"][0]["model"]["psnr"] - res["bicubic"]["psnr"])  # noqa: E731
    assert gap(a) < gap(again)


def test_configure_sampler_in_place_and_inferred_config(pipe_dir, tmp_path):
    import shutil

    from restoration.pipeline_ddpm_hq import configure_sampler

    folder = shutil.copytree(pipe_dir, tmp_path / "m")
    weights = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    pipe = configure_sampler(folder, "dpmsolver++", num_inference_steps=6, strength=0.5)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.sampler_name == "dpmsolver++"
    assert (pipe.config.num_inference_steps, pipe.config.strength) == (6, 0.5)
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    fresh = load_pipeline(folder).set_sampler("dpmsolver++")  # the same sampler the folder now names
    img = toy_image()
    a = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
    b = fresh(img, num_inference_steps=6, strength=0.5, generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="strength"):
        configure_sampler(folder, strength=0.0)
    # built by hand: space_to_depth and prediction_type default to what the UNet and scheduler say
    direct = DDPMHQPipeline(pipe.unet, pipe.scheduler, lq_size=16, residual_scale=4.0)
    assert direct.config.space_to_depth == 4 and direct.config.prediction_type == "sample"


def test_shipped_opt_in_model_loads_and_restores_deterministically() -> None:
    """The trained restorer shipped in the package (opt-in, restoration/pretrained/ddpm-hq-v0) loads with local files
    only, carries its scale, and gives the same output for the same generator."""
    from pathlib import Path

    import restoration.pretrained as pretrained

    folder = Path(pretrained.__file__).resolve().parent / "ddpm-hq-v0"
    pipe = load_pipeline(folder)
    assert pipe.config.lq_size == 512 and pipe.config.scale == 2
    img = toy_image(64, 48)
    a = pipe(img, num_inference_steps=2, strength=0.5, generator=torch.Generator().manual_seed(0)).images[0]
    b = pipe(img, num_inference_steps=2, strength=0.5, generator=torch.Generator().manual_seed(0)).images[0]
    assert a.shape == pipe.output_size((64, 48)) and np.isfinite(a).all() and 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)


def test_anchor_low_frequencies_swaps_only_the_coarse_part() -> None:
    from scipy.ndimage import gaussian_filter

    from restoration.low_frequency_anchor import anchor_low_frequencies

    rng = np.random.default_rng(0)
    ref = gaussian_filter(rng.random((64, 48)), 6) * 0.6 + 0.2  # the input's tone, smooth
    detail = gaussian_filter(rng.normal(0, 0.05, (64, 48)), 0.7)  # what a restorer adds
    detail -= gaussian_filter(detail, 3.0)
    restored = 1.2 * ref - 0.15 + detail  # re-exposed (gain and offset), with new fine detail
    out = anchor_low_frequencies(restored, ref, 3.0)
    assert out.dtype == np.float32 and out.shape == ref.shape
    coarse = lambda x: gaussian_filter(x.astype(np.float64), 3.0)  # noqa: E731
    assert np.abs(coarse(out) - coarse(ref)).max() < 0.02 < np.abs(coarse(restored) - coarse(ref)).max()
    fine = lambda x: x - gaussian_filter(x.astype(np.float64), 1.0)  # noqa: E731
    assert np.corrcoef(fine(out).ravel(), fine(detail).ravel())[0, 1] > 0.95  # the added detail is kept
    with pytest.raises(ValueError, match="sigma"):
        anchor_low_frequencies(restored, ref, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        anchor_low_frequencies(restored, ref[:10], 3.0)


def test_anchored_pipeline_keeps_the_input_tone_and_the_restored_detail(pipe_dir, tmp_path):
    import shutil

    from scipy.ndimage import gaussian_filter

    from restoration.low_frequency_anchor import unwindow
    from restoration.pipeline_ddpm_hq import configure_sampler
    from restoration.preprocess import PreprocessConfig, percentile_window, resize_image

    pipe = load_pipeline(pipe_dir)
    assert pipe.config.anchor_sigma == 0.0  # off unless a model folder says otherwise
    img = toy_image(64, 48)
    plain = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
    anchored = pipe(img, generator=torch.Generator().manual_seed(0), anchor_sigma=2.0).images[0]
    assert anchored.shape == plain.shape and anchored.dtype == np.float32
    ref = resize_image(img, anchored.shape)  # the input, bicubic-upsampled, in its own intensity scale
    lo, hi = percentile_window(img, PreprocessConfig(**pipe.config.preprocess))
    plain_in_input_scale = unwindow(plain, lo, hi)
    coarse = lambda x: gaussian_filter(np.asarray(x, np.float64), 2.0)  # noqa: E731
    inner = (slice(6, -6), slice(6, -6))
    assert np.abs(coarse(anchored) - coarse(ref))[inner].max() < 0.02
    assert np.abs(coarse(plain) - coarse(ref))[inner].max() > 0.05  # windowed + re-toned without the anchor
    fine = lambda x: np.asarray(x, np.float64) - coarse(x)  # noqa: E731
    np.testing.assert_allclose(fine(anchored)[inner], fine(plain_in_input_scale)[inner], atol=0.02)
    # the folder carries the setting: configure it once, callers pass nothing
    folder = shutil.copytree(pipe_dir, tmp_path / "anchored")
    configured = configure_sampler(folder, anchor_sigma=2.0)
    assert json.loads((folder / "model_index.json").read_text())["anchor_sigma"] == 2.0
    again = configured(img, generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_array_equal(again, anchored)
    with pytest.raises(ValueError, match="anchor_sigma"):
        configured(img, anchor_sigma=-1.0)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "anchor_sigma": -2}))
    with pytest.raises(ModelFolderError, match="anchor_sigma must be a number >= 0"):
        load_pipeline(folder)
