"""LQ-domain models of the restorer: MUNIT-LQ and two-stage DDPM-LQ (tiny nets, 16 px, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from data.images import read_png16, write_png8, write_png16
from restoration import ddpm_lq
from restoration.ddpm_lq import DDPMLQConfig, build_scheduler, build_unet, denoiser_output, sdedit, sdedit_timesteps
from restoration.degrader_data import ScaledImages, pad_to_multiple, random_crop, real_images
from restoration.munit import MUNIT, MUNITConfig
from restoration.pairs import name_seed, pair_names
from restoration.preprocess import PreprocessConfig
from restoration.splits import is_held_out
from restoration.train_ddpm_lq import DDPMLQTrainConfig, PairedCrops
from restoration.train_ddpm_lq import make_pairs as ddpm_make_pairs
from restoration.train_ddpm_lq import train as train_ddpm
from restoration.train_munit import MUNITTrainConfig
from restoration.train_munit import make_pairs as munit_make_pairs
from restoration.train_munit import _step_if_finite
from restoration.train_munit import train as train_munit
from restoration.training_setup import prune_checkpoints

SIZE = 16  # side of the tiny nets' test tensors
SCALE = 32  # the "LQ scale" of the tiny training runs (512 at the paper's scale): longer side of every image
CROP = 16  # training crops (not equal to the whole images that inference sees)
HQ_SHAPE = (40, 48)  # real images: not square, not at the scale -> (27, 32) at the LQ scale, (54, 64) as HQ


def tiny_munit_cfg(**kw: object) -> MUNITConfig:
    base = dict(dim=8, n_downsample=1, n_res=1, mlp_dim=16, style_n_downsample=2, dis_dim=8, dis_n_layer=2)
    return MUNITConfig(**(base | kw))  # type: ignore[arg-type]


def tiny_ddpm_cfg(**kw: object) -> DDPMLQConfig:
    base = dict(
        image_size=SIZE, space_to_depth=2, block_out_channels=(16, 32), down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, num_train_timesteps=100,
    )  # fmt: skip
    return DDPMLQConfig(**(base | kw))  # type: ignore[arg-type]


def blobs(n: int, gen: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """(n, 1, size, size) smooth Gaussian blobs in [-1, 1]."""
    ax = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c = torch.rand(n, 2, generator=gen) * 1.2 - 0.6
    r = torch.rand(n, generator=gen) * 0.3 + 0.25
    d = ((xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2) / r[:, None, None] ** 2
    return (torch.exp(-d) * 2 - 1)[:, None]


def box_blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def _patients(n_train: int, n_held: int) -> tuple[list[str], list[str]]:
    """Patient ids on each side of the project's held-out split."""
    ids = [f"p{i:03d}" for i in range(200)]
    return [p for p in ids if not is_held_out(p)][:n_train], [p for p in ids if is_held_out(p)][:n_held]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HQ: 8-bit non-square PNGs of train and held-out patients (images.csv), one stem repeated in a subfolder;
    LQ: 16-bit blurred square PNGs of another size, in two folders."""
    root = tmp_path_factory.mktemp("lq_data")
    g = torch.Generator().manual_seed(0)
    train_ids, held_ids = _patients(4, 2)
    rows = ["image,patient_id"]
    hq = ((blobs(7, g, 48)[..., 4:44, :] + 1) / 2).numpy()  # 40 x 48
    for i, pid in enumerate(train_ids + held_ids):
        write_png8(root / "hq" / f"cxr{i}.png", hq[i, 0])
        rows.append(f"cxr{i}.png,{pid}")
    write_png8(root / "hq" / "more" / "cxr0.png", hq[6, 0])  # same stem in a subfolder (images.csv above it: cxr0's patient)
    (root / "hq" / "images.csv").write_text("\n".join(rows) + "\n")
    lq = ((box_blur(blobs(4, g, 24)) + 1) / 2).numpy()
    for i in range(4):
        write_png16(root / f"lq{i % 2}" / f"drr{i}.png", np.rint(lq[i, 0] * 65535).astype(np.uint16))
    held = {f"cxr{i}.png" for i in range(4, 6)}
    return {"root": root, "hq": root / "hq", "lq": [root / "lq0", root / "lq1"], "held": held}  # type: ignore[dict-item]


# ------------------------------------------------------------------------------------------------ MUNIT


def test_munit_losses_and_paper_preset() -> None:
    """MUNIT (Huang et al. 2018): lambda_x = 10, lambda_c = lambda_s = 1, GAN 1; Adam 1e-4, (0.5, 0.999), wd 1e-4.

    The default is compact (CPU) and attention-free; ``paper()`` is the published width.
    """
    m = MUNITConfig()
    assert (m.gan_w, m.recon_x_w, m.recon_c_w, m.recon_s_w) == (1.0, 10.0, 1.0, 1.0)
    assert m.recon_x_cyc_w == 0.0 and m.style_dim == 8 and m.n_downsample == 2
    p = MUNITConfig.paper()
    assert (p.dim, p.n_res, p.up_kernel, p.mlp_dim, p.dis_dim) == (64, 4, 5, 256, 64)
    assert sum(x.numel() for x in MUNIT(m).gen_a.parameters()) < sum(x.numel() for x in MUNIT(p).gen_a.parameters()) / 8
    t = MUNITTrainConfig(hq_dir="h", lq_dir="l", output_dir="o")
    assert (t.lr, t.adam_beta1, t.adam_beta2, t.adam_weight_decay) == (1e-4, 0.5, 0.999, 1e-4)
    assert (t.lr_step_size, t.lr_gamma) == (100_000, 0.5)
    assert (t.preprocess.size, t.crop_size, t.real_split) == (512, 128, "train")
    with pytest.raises(ValueError, match="crop_size 30 must be a multiple of 2\\*\\*n_downsample = 4"):
        MUNITTrainConfig(hq_dir="h", lq_dir="l", output_dir="o", crop_size=30)


def test_crops_scale_and_patient_split(folders: dict[str, Path]) -> None:
    """Real images: only the requested side of the patient split; every image at the LQ scale, aspect kept."""
    train = real_images(folders["hq"], "train")
    held = real_images([folders["hq"]], "held_out")
    assert {p.name for p in held} == folders["held"] and not set(train) & set(held)
    assert len(train) + len(held) == len(real_images(folders["hq"], "all")) == 7
    with pytest.raises(ValueError, match="split must be one of train, held_out, all"):
        real_images(folders["hq"], "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a folder of images"):
        real_images(folders["root"] / "nope", "train")
    imgs = ScaledImages(train, PreprocessConfig(size=SCALE))
    assert imgs.array(0).shape == (27, 32) and imgs.array(0).min() == -1.0 and imgs.array(0).max() == 1.0
    crops = imgs.crops([0, 1, 0], CROP, torch.Generator().manual_seed(0))
    again = imgs.crops([0, 1, 0], CROP, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 1, CROP, CROP) and torch.equal(crops, again)
    assert not torch.equal(crops[0], crops[2])  # same image, other position
    whole = torch.from_numpy(imgs.array(0))
    c = random_crop(imgs.array(0), CROP, torch.Generator().manual_seed(3))[0]
    hits = [(i, j) for i in range(27 - CROP + 1) for j in range(32 - CROP + 1) if torch.equal(whole[i : i + CROP, j : j + CROP], c)]
    assert hits  # a crop is a window of the whole image, not a resample
    assert random_crop(imgs.array(0), 40, torch.Generator()).shape == (1, 40, 40)  # larger than the image: padded
    x, hw = pad_to_multiple(torch.zeros(1, 1, 27, 32), 8)
    assert x.shape == (1, 1, 32, 32) and hw == (27, 32)


def test_munit_shapes_and_input_checks() -> None:
    torch.manual_seed(0)
    m = MUNIT(tiny_munit_cfg()).eval()
    x = torch.rand(3, 1, SIZE, SIZE) * 2 - 1
    c, s = m.gen_a.encode(x)
    assert c.shape == (3, 16, SIZE // 2, SIZE // 2) and s.shape == (3, 8)
    y = m.translate_hq_to_lq(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert [o.shape[-1] for o in m.dis_a(x)] == [4, 2, 1]  # 3 scales
    with pytest.raises(ValueError, match="multiples of 2"):
        m.translate_hq_to_lq(torch.zeros(1, 1, 15, 16))
    with pytest.raises(ValueError, match="allowed: 'gen', 'dis'"):
        m(x, x, mode="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be >= 1"):
        tiny_munit_cfg(dim=0)
    with pytest.raises(ValueError, match="unknown MUNITConfig field 'dims': expected one of in_channels, dim"):
        MUNITConfig.from_dict({"dims": 8})


@pytest.mark.slow
def test_munit_losses_finite_and_decreasing() -> None:
    torch.manual_seed(0)
    m = MUNIT(tiny_munit_cfg(recon_x_cyc_w=1.0))
    opt_g = torch.optim.Adam(m.generator_parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(m.discriminator_parameters(), lr=1e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    totals, recons = [], []
    for _ in range(30):
        x_a, x_b = blobs(4, g), box_blur(blobs(4, g))  # domain a: sharp blobs, domain b: blurred blobs
        opt_d.zero_grad()
        d = m(x_a, x_b, mode="dis")
        d["total"].backward()
        opt_d.step()
        opt_g.zero_grad()
        losses = m(x_a, x_b, mode="gen", generator=g)
        losses["total"].backward()
        opt_g.step()
        assert all(torch.isfinite(v) for v in (*losses.values(), *d.values()))
        totals.append(float(losses["total"].detach()))
        recons.append(float((losses["recon_x_a"] + losses["recon_x_b"]).detach()))
    assert {"gan_a", "recon_x_b", "recon_s_a", "recon_c_b", "recon_x_cyc_a", "total"} <= set(losses)
    assert np.mean(totals[-5:]) < 0.6 * np.mean(totals[:5])
    assert np.mean(recons[-5:]) < 0.5 * np.mean(recons[:5])


def test_munit_translate_sampled_vs_extracted_style() -> None:
    torch.manual_seed(0)
    m = MUNIT(tiny_munit_cfg()).eval()
    g = torch.Generator().manual_seed(0)
    x_hq, x_lq = blobs(2, g), box_blur(blobs(2, g))
    with torch.no_grad():
        a = m.translate_hq_to_lq(x_hq, generator=torch.Generator().manual_seed(5))
        b = m.translate_hq_to_lq(x_hq, generator=torch.Generator().manual_seed(5))
        c = m.translate_hq_to_lq(x_hq, generator=torch.Generator().manual_seed(6))
        s = m.encode_style(x_lq)
        e = m.translate_hq_to_lq(x_hq, style=s)
        e0 = m.translate_hq_to_lq(x_hq, style=s[:1])  # one style for the whole batch
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert s.shape == (2, 8) and e.shape == x_hq.shape and not torch.allclose(e, a)
    assert torch.allclose(e0[0], e[0], atol=1e-6)
    with pytest.raises(ValueError, match="style must be"):
        m.translate_hq_to_lq(x_hq, style=torch.zeros(2, 5))


def test_munit_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = MUNIT(tiny_munit_cfg(n_scales=2)).eval()
    x = blobs(2, torch.Generator().manual_seed(0))
    m2 = MUNIT.load(m.save(tmp_path / "munit"))
    assert m2.cfg == m.cfg
    with torch.no_grad():
        for model_out in (lambda mm: mm.translate_hq_to_lq(x, generator=torch.Generator().manual_seed(3)),
                          lambda mm: mm.translate(x, "b", style=torch.ones(8))):  # fmt: skip
            assert torch.equal(model_out(m), model_out(m2))
    with pytest.raises(ValueError, match="not a MUNIT model folder"):
        MUNIT.load(tmp_path)


def _pairs_ok(out: Path, names: set[str], lq_shape: tuple[int, int]) -> dict:
    """The folder holds exactly ``names``: 16-bit LQ of ``lq_shape`` and HQ of twice that; returns pairs.json."""
    assert {p.name for p in (out / "lq").iterdir()} == names == {p.name for p in (out / "hq").iterdir()}
    for n in names:
        lq, hq = read_png16(out / "lq" / n), read_png16(out / "hq" / n)
        assert lq.dtype == np.uint16 and lq.shape == lq_shape and hq.shape == (2 * lq_shape[0], 2 * lq_shape[1])
    meta = json.loads((out / "pairs.json").read_text())
    assert meta["complete"] is True and {r["name"] for r in meta["pairs"]} == names
    assert all(r["patient"] for r in meta["pairs"])
    return meta


def _check_pairs_split_and_resume(make: object, folders: dict[str, Path], tmp_path: Path) -> None:
    """train/held_out pairs hold disjoint patients; same seed -> same bytes; a broken run resumes to the same bytes."""
    train_names = {"cxr0.png", "cxr1.png", "cxr2.png", "cxr3.png", "more__cxr0.png"}
    p_train = make(tmp_path / "p_train", "train")  # type: ignore[operator]
    meta = _pairs_ok(p_train, train_names, (27, 32))
    p_held = make(tmp_path / "p_held", "held_out")  # type: ignore[operator]
    meta_held = _pairs_ok(p_held, folders["held"], (27, 32))
    assert meta["split"] == "train" and meta_held["split"] == "held_out"
    assert not {r["patient"] for r in meta["pairs"]} & {r["patient"] for r in meta_held["pairs"]}
    again = make(tmp_path / "p_again", "train")  # type: ignore[operator]
    for n in train_names:
        assert (p_train / "lq" / n).read_bytes() == (again / "lq" / n).read_bytes()
    # interrupted: one pair lost its LQ, another is missing, pairs.json says incomplete -> rerun completes it
    (again / "lq" / "cxr1.png").unlink()
    (again / "hq" / "cxr2.png").unlink()
    (again / "lq" / "cxr2.png").unlink()
    kept = (again / "lq" / "cxr3.png").stat().st_mtime_ns
    make(again, "train")  # type: ignore[operator]
    assert (again / "lq" / "cxr3.png").stat().st_mtime_ns == kept  # not redone
    for n in train_names:
        assert (p_train / "lq" / n).read_bytes() == (again / "lq" / n).read_bytes()
    with pytest.raises(ValueError, match="holds pairs made with other settings \\(seed\\)"):
        make(again, "train", seed=99)  # type: ignore[operator]


@pytest.mark.slow
def test_munit_crop_training_resume_and_whole_image_pairs(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "munit_run"
    cfg = MUNITTrainConfig(
        hq_dir=str(folders["hq"]), lq_dir=[str(d) for d in folders["lq"]], output_dir=str(out),
        model=tiny_munit_cfg(), preprocess=PreprocessConfig(size=SCALE), crop_size=CROP, batch_size=2,
        max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2, log_every=1, sample_every=2,
        progress=False,
    )  # fmt: skip
    model_dir = train_munit(cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    cfg.max_train_steps = 4
    model_dir = train_munit(cfg)  # resumes from checkpoint-3, one more step
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    info = json.loads((model_dir / "train_config.json").read_text())
    assert info["resumed_from"] == "checkpoint-3" and info["global_step"] == 4 and info["crop_size"] == CROP
    assert info["images"] == {"hq": 5, "lq": 4}  # real images: the train part of the patient split only
    # the interrupted run ends where an uninterrupted one does: weights, optimiser, RNG (crops), data order restored
    whole = MUNITTrainConfig.from_dict(cfg.to_dict() | {"output_dir": str(tmp_path / "whole"), "checkpointing_steps": 0})
    w_whole = load_file(train_munit(whole) / "munit.safetensors")
    w_resumed = load_file(model_dir / "munit.safetensors")
    assert w_whole.keys() == w_resumed.keys()
    assert all(torch.allclose(w_whole[k], w_resumed[k], atol=1e-6) for k in w_whole)

    def make(dest: Path, split: str, seed: int = 7) -> Path:
        return munit_make_pairs(model_dir, folders["hq"], dest, style="random", seed=seed, split=split, progress=False)

    _check_pairs_split_and_resume(make, folders, tmp_path)
    # the LQ is MUNIT's translation of the whole HQ downsampled 2x, with the style of (seed, name)
    model = MUNIT.load(model_dir)
    hq = torch.from_numpy(read_png16(tmp_path / "p_train" / "hq" / "cxr1.png").astype(np.float32) / 32767.5 - 1)
    x, _ = pad_to_multiple(F.avg_pool2d(hq[None, None], 2), 2)
    style = model.sample_style(1, "cpu", torch.Generator().manual_seed(name_seed(7, "cxr1.png")))
    with torch.no_grad():
        expect = model.translate_hq_to_lq(x, style=style)[0, 0, :27, :32]
    got = torch.from_numpy(read_png16(tmp_path / "p_train" / "lq" / "cxr1.png").astype(np.float32) / 32767.5 - 1)
    assert (got - expect).abs().max() < 2e-3
    p3 = munit_make_pairs(model_dir, folders["hq"], tmp_path / "p3", style="lq-extracted", lq_dir=folders["lq"],
                          progress=False)  # fmt: skip
    meta = json.loads((p3 / "pairs.json").read_text())
    assert meta["style"] == "lq-extracted" and all(r["style_source"] for r in meta["pairs"])
    with pytest.raises(ValueError, match="needs lq_dir"):
        munit_make_pairs(model_dir, folders["hq"], tmp_path / "p4", style="lq-extracted")
    with pytest.raises(ValueError, match="style must be one of"):
        munit_make_pairs(model_dir, folders["hq"], tmp_path / "p4", style="nope")  # type: ignore[arg-type]
    pairs = PairedCrops(p3, SCALE)  # DDPM-LQ's optional conditional stage 2 reads the same layout, aligned
    lq, hq_c = pairs.crops([0, 1], CROP, torch.Generator().manual_seed(0), augment=False)
    assert lq.shape == hq_c.shape == (2, 1, CROP, CROP)
    assert pairs.pair(0).shape == (2, 27, 32)


def test_pair_names_and_checkpoint_pruning(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    paths = [root / "a.png", root / "x" / "a.png", root / "b.jpg"]
    assert pair_names(paths, root) == ["a.png", "x__a.png", "b.png"]
    for n in (1, 2, 10, 3):
        (tmp_path / f"checkpoint-{n}").mkdir()
    removed = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint-1", "checkpoint-2"]  # numeric order, not lexical
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-3"]


# ---------------------------------------------------------------------------------------------- DDPM-LQ


def test_sdedit_strength_zero_identity_and_determinism() -> None:
    torch.manual_seed(0)
    cfg = tiny_ddpm_cfg()
    unet, sched = build_unet(cfg).eval(), build_scheduler(cfg)
    x = blobs(2, torch.Generator().manual_seed(0))
    assert torch.equal(sdedit(unet, sched, x, 0.0, 3), x)
    y1 = sdedit(unet, sched, x, 0.5, 3, generator=torch.Generator().manual_seed(1))
    y2 = sdedit(unet, sched, x, 0.5, 3, generator=torch.Generator().manual_seed(1))
    y3 = sdedit(unet, sched, x, 0.5, 3, generator=torch.Generator().manual_seed(2))
    assert y1.shape == x.shape and y1.abs().max() <= 1
    assert not torch.allclose(y1, x) and torch.equal(y1, y2) and not torch.allclose(y1, y3)
    assert sched.timesteps.numel() == cfg.num_train_timesteps  # caller's scheduler untouched
    assert sdedit_timesteps(0.5, 5, 100) == [50, 38, 25, 12, 0]
    assert sdedit_timesteps(1.0, 3, 100)[0] == 99 and sdedit_timesteps(0.001, 5, 100) == [0]
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        sdedit(unet, sched, x, 1.5, 3)


def test_ddpm_lq_config_errors_and_compact_default() -> None:
    with pytest.raises(ValueError, match="allowed"):
        DDPMLQConfig(image_size=16, block_out_channels=(16,), down_block_types=("Nope",), up_block_types=("UpBlock2D",))
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        DDPMLQConfig(beta_schedule="cubic")
    with pytest.raises(ValueError, match="multiple of space_to_depth \\* 2\\*\\*\\(levels-1\\) = 16"):
        DDPMLQConfig(image_size=120)
    assert DDPMLQConfig.from_dict(tiny_ddpm_cfg().to_dict()) == tiny_ddpm_cfg()
    unet = build_unet(DDPMLQConfig())
    attn = [n for n, m in unet.named_modules() if type(m).__name__ == "Attention"]
    assert not attn and unet.config.in_channels == 32 and unet.config.out_channels == 16  # 4x unshuffle
    assert [type(m).__name__ for m in build_unet(DDPMLQConfig.paper()).modules()].count("Attention") > 0
    t = DDPMLQTrainConfig(lq_dir="l", output_dir="o", crop_size=64)
    assert t.model.image_size == 64 and t.preprocess.size == 512 and t.real_split == "train"
    with pytest.raises(ValueError, match="crop_size 72 must be a multiple of"):
        DDPMLQTrainConfig(lq_dir="l", output_dir="o", crop_size=72)


def test_ddpm_lq_loss_decreases_on_fixed_crops_and_runs_on_whole_images() -> None:
    """A few Adam steps on one fixed batch of crops lower the loss; the crop-trained UNet denoises a larger image."""
    torch.manual_seed(0)
    cfg = tiny_ddpm_cfg()
    unet, sched = build_unet(cfg), build_scheduler(cfg)
    g = torch.Generator().manual_seed(0)
    x = box_blur(blobs(4, g))
    noise, t = torch.randn(x.shape, generator=g), torch.randint(0, 100, (4,), generator=g)
    x_t = sched.add_noise(x, noise, t)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = F.mse_loss(denoiser_output(unet, x_t, None, t, cfg.space_to_depth), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    unet.eval()
    big = blobs(1, g, 40)[..., :28, :]  # 28 x 40: not the crop size, not square (multiples of pad_multiple 4)
    y = sdedit(unet, sched, big, 0.3, 3, generator=torch.Generator().manual_seed(0))
    assert y.shape == big.shape and torch.isfinite(y).all() and not torch.allclose(y, big)


@pytest.mark.slow
def test_ddpm_lq_two_stages_crops_resume_and_pairs(folders: dict[str, Path], tmp_path: Path) -> None:
    base = dict(
        lq_dir=[str(d) for d in folders["lq"]], model=tiny_ddpm_cfg(), preprocess=PreprocessConfig(size=SCALE),
        crop_size=CROP, batch_size=2, lr_warmup_steps=0, log_every=1, progress=False, checkpointing_steps=1,
        checkpoints_total_limit=2,
    )  # fmt: skip
    s1 = DDPMLQTrainConfig(  # constant lr: a cosine schedule would depend on max_train_steps, changed below
        hq_dir=str(folders["hq"]), output_dir=str(tmp_path / "s1"), lr=1e-2, max_train_steps=3,
        lr_scheduler="constant", **base,
    )  # fmt: skip
    with pytest.raises(ValueError, match="init_from is for stage 2"):
        train_ddpm(s1, stage=1, init_from=tmp_path)
    m1 = train_ddpm(s1, stage=1)
    assert sorted(p.name for p in (tmp_path / "s1").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    s1.max_train_steps = 4
    m1 = train_ddpm(s1, stage=1)  # resume
    assert sorted(p.name for p in (tmp_path / "s1").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert ddpm_lq.read_extra(m1)["resumed_from"] == "checkpoint-3"
    assert ddpm_lq.read_extra(m1)["images"] == 5 + 4  # stage 1: train-part real images + DRRs
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    w_resumed = load_file(m1 / unet_file)
    # the saved model is the EMA, not the raw weights of the last step (checkpoint-4 holds those)
    raw = load_file(tmp_path / "s1" / "checkpoint-4" / "model.safetensors")
    assert raw.keys() == w_resumed.keys() and any(not torch.equal(raw[k], w_resumed[k]) for k in raw)
    # the interrupted run ends where an uninterrupted one does (weights, optimiser, EMA, RNGs incl. crops, data order)
    whole = DDPMLQTrainConfig.from_dict(s1.to_dict() | {"output_dir": str(tmp_path / "s1_whole"), "checkpointing_steps": 0})
    w_whole = load_file(train_ddpm(whole, stage=1) / unet_file)
    assert all(torch.allclose(w_whole[k], w_resumed[k], atol=1e-6) for k in w_whole)

    # stage 2: other seed and a tiny lr, so a re-initialised UNet would be far from stage 1, a loaded one close
    s2 = DDPMLQTrainConfig(output_dir=str(tmp_path / "s2"), lr=1e-6, max_train_steps=1, seed=1, **base)
    with pytest.raises(ValueError, match="pass init_from"):
        train_ddpm(s2, stage=2)
    with pytest.raises(ValueError, match="stage must be one of"):
        train_ddpm(s2, stage=3)
    m2 = train_ddpm(s2, stage=2, init_from=m1)
    u1, _, _ = ddpm_lq.load(m1)
    u2, sched2, cfg2 = ddpm_lq.load(m2)
    torch.manual_seed(1)
    fresh = build_unet(cfg2)
    with torch.no_grad():
        to_s1 = max(float((a - b).abs().max()) for a, b in zip(u1.parameters(), u2.parameters(), strict=True))
        to_fresh = max(float((a - b).abs().max()) for a, b in zip(fresh.parameters(), u2.parameters(), strict=True))
    assert to_s1 < 1e-3 < 0.05 < to_fresh
    extra = ddpm_lq.read_extra(m2)
    assert extra["stage"] == 2 and extra["init_from"] == str(m1)

    def make(dest: Path, split: str, seed: int = 3) -> Path:
        return ddpm_make_pairs(m2, folders["hq"], dest, strength=0.4, steps=2, seed=seed, split=split, progress=False)

    _check_pairs_split_and_resume(make, folders, tmp_path)
    meta = json.loads((tmp_path / "p_train" / "pairs.json").read_text())
    assert meta["strength"] == 0.4 and meta["conditional"] is False and meta["hq_size"] == 2 * SCALE

    # reading A: stage 2 conditioned on the HQ of a pairs folder; its make_pairs must feed the HQ as condition
    s3 = DDPMLQTrainConfig(
        output_dir=str(tmp_path / "s3"), pairs_dir=str(tmp_path / "p_train"), lr=1e-2, max_train_steps=1, seed=2,
        **base,
    )  # fmt: skip
    m3 = train_ddpm(s3, stage=2, init_from=m1)
    assert ddpm_lq.read_extra(m3)["conditional"] is True
    p3 = ddpm_make_pairs(m3, folders["hq"], tmp_path / "p3", strength=0.6, steps=2, seed=3, progress=False)
    assert json.loads((p3 / "pairs.json").read_text())["conditional"] is True
    u3, sched3, _ = ddpm_lq.load(m3)
    hq = torch.from_numpy(read_png16(p3 / "hq" / "cxr1.png").astype(np.float32) / 32767.5 - 1)
    x, _ = pad_to_multiple(F.avg_pool2d(hq[None, None], 2), 4)
    gen = lambda: [torch.Generator().manual_seed(name_seed(3, "cxr1.png"))]  # noqa: E731
    with_cond = sdedit(u3, sched3, x, 0.6, 2, generator=gen(), condition=x)[0, 0, :27, :32]
    without = sdedit(u3, sched3, x, 0.6, 2, generator=gen())[0, 0, :27, :32]
    written = torch.from_numpy(read_png16(p3 / "lq" / "cxr1.png").astype(np.float32) / 32767.5 - 1)
    assert (written - with_cond).abs().max() < 2e-3  # the pairs are the HQ-conditioned SDEdit...
    assert (written - without).abs().max() > 1e-2  # ...not the zero-condition one


def test_time_budget_stops_with_a_checkpoint_and_the_next_run_continues(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """max_train_seconds: the run stops after the step that spends it, checkpoints there, and a rerun continues."""
    out = tmp_path / "timed"
    cfg = DDPMLQTrainConfig(
        hq_dir=str(folders["hq"]), lq_dir=[str(d) for d in folders["lq"]], output_dir=str(out), model=tiny_ddpm_cfg(),
        preprocess=PreprocessConfig(size=SCALE), crop_size=CROP, batch_size=2, max_train_steps=50,
        max_train_seconds=1e-3, checkpointing_steps=0, report_to=None, progress=False,
    )  # fmt: skip
    m = train_ddpm(cfg, stage=1)
    assert ddpm_lq.read_extra(m)["global_step"] == 1
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    (out / ".checkpoint-9.partial").mkdir()  # a run killed while saving step 9: never resumed from, then removed
    (out / ".checkpoint-9.partial" / "model.safetensors").write_bytes(b"trunc")
    m = train_ddpm(cfg, stage=1)
    assert ddpm_lq.read_extra(m)["global_step"] == 2 and ddpm_lq.read_extra(m)["resumed_from"] == "checkpoint-1"
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "checkpoint-2"]
    mcfg = MUNITTrainConfig(
        hq_dir=str(folders["hq"]), lq_dir=[str(d) for d in folders["lq"]], output_dir=str(tmp_path / "m"),
        model=tiny_munit_cfg(), preprocess=PreprocessConfig(size=SCALE), crop_size=CROP, batch_size=2,
        max_train_steps=50, max_train_seconds=1e-3, checkpointing_steps=0, report_to=None, progress=False,
    )  # fmt: skip
    info = json.loads((train_munit(mcfg) / "train_config.json").read_text())
    assert info["global_step"] == 1 and (tmp_path / "m" / "checkpoint-1").is_dir()


def test_a_non_finite_munit_update_is_skipped() -> None:
    """An update with a non-finite gradient is dropped instead of poisoning the weights (MUNIT-LQ's trainer)."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert _step_if_finite(opt) is False and torch.equal(p.detach(), torch.ones(3)) and p.grad is None
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    assert _step_if_finite(opt) is True and float(p.detach().max()) < 1.0


def test_random_crop_skips_flat_regions_and_munit_stays_finite() -> None:
    """A DRR whose collimated border is exactly constant gives textured crops, and a MUNIT step on them is finite."""
    import torch

    from restoration.degrader_data import random_crop
    from restoration.munit import MUNIT, MUNITConfig

    img = np.ones((64, 64), np.float32)  # white collimation everywhere ...
    img[40:, 40:] = np.random.default_rng(0).random((24, 24))  # ... but one exposed corner
    gen = torch.Generator().manual_seed(0)
    crops = [random_crop(img, 16, gen, tries=64) for _ in range(20)]
    assert all(float(c.std()) >= 0.01 for c in crops)
    flat = random_crop(np.ones((32, 32), np.float32), 16, gen)  # nothing textured anywhere: still a crop
    assert flat.shape == (1, 16, 16)

    torch.manual_seed(0)
    model = MUNIT(MUNITConfig(dim=4, mlp_dim=8, dis_dim=4, n_res=1, style_dim=2, n_scales=1))
    x_b = torch.stack([c * 2 - 1 for c in crops[:2]])
    x_a = torch.rand(2, 1, 16, 16) * 2 - 1
    losses = model(x_a, x_b, "gen")
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_munit_lowpass_loss_ties_coarse_intensities() -> None:
    """lowpass_w adds L1(pool(x_ab), pool(x_a)) + L1(pool(x_ba), pool(x_b)) to the generator objective; it is zero
    for a translation that keeps the coarse intensities and large for an inverted one."""
    g = torch.Generator().manual_seed(0)
    x_a, x_b = blobs(2, g), box_blur(blobs(2, g))
    totals = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        m = MUNIT(tiny_munit_cfg(lowpass_w=w, lowpass_factor=4))
        out = m(x_a, x_b, mode="gen", generator=torch.Generator().manual_seed(1))
        totals[w] = (float(out["total"]), out)
    lp = totals[2.0][1]
    assert "lowpass_a" in lp and "lowpass_a" not in totals[0.0][1]
    assert totals[2.0][0] == pytest.approx(totals[0.0][0] + 2.0 * float(lp["lowpass_a"] + lp["lowpass_b"]), rel=1e-5)
    pool = lambda x: F.avg_pool2d(x, 4, ceil_mode=True)  # noqa: E731
    assert float(F.l1_loss(pool(-x_a), pool(x_a))) > 0.3  # what an inverted HQ -> LQ translation would pay
    assert MUNITConfig().lowpass_w > 0 and MUNITConfig.paper().lowpass_w > 0
