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
from restoration.ddpm_lq import DDPMLQConfig, build_scheduler, build_unet, sdedit, sdedit_timesteps
from restoration.munit import MUNIT, MUNITConfig
from restoration.preprocess import PreprocessConfig
from restoration.train_ddpm_lq import DDPMLQTrainConfig, PairsDataset
from restoration.train_ddpm_lq import make_pairs as ddpm_make_pairs
from restoration.train_ddpm_lq import train as train_ddpm
from restoration.pairs import item_seed, pair_names
from restoration.train_munit import MUNITTrainConfig
from restoration.train_munit import make_pairs as munit_make_pairs
from restoration.train_munit import train as train_munit
from restoration.training_setup import prune_checkpoints

SIZE = 16


def tiny_munit_cfg(**kw: object) -> MUNITConfig:
    base = dict(dim=8, n_downsample=1, n_res=1, mlp_dim=16, style_n_downsample=2, dis_dim=8, dis_n_layer=2)
    return MUNITConfig(**(base | kw))  # type: ignore[arg-type]


def tiny_ddpm_cfg() -> DDPMLQConfig:
    return DDPMLQConfig(
        image_size=SIZE,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        num_train_timesteps=100,
    )


def blobs(n: int, gen: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """(n, 1, size, size) smooth Gaussian blobs in [-1, 1]."""
    ax = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c = torch.rand(n, 2, generator=gen) * 1.2 - 0.6
    r = torch.rand(n, generator=gen) * 0.3 + 0.25
    d = ((xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2) / r[:, None, None] ** 2
    return (torch.exp(-d) * 2 - 1)[:, None]


def read_pm1(folder: Path, names: list[str]) -> torch.Tensor:
    """(N, 1, H, W) tensor in [-1, 1] from the 16-bit PNGs ``folder/name``."""
    return torch.stack([torch.from_numpy(read_png16(folder / n).astype(np.float32) / 32767.5 - 1)[None] for n in names])


def box_blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny tensors gain nothing from threads, and a busy 2-core machine makes OpenMP spin-waits very slow."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HQ: 8-bit PNGs (one name repeated in a subfolder); LQ: 16-bit blurred PNGs of another size."""
    root = tmp_path_factory.mktemp("lq_data")
    g = torch.Generator().manual_seed(0)
    hq = ((blobs(5, g, 20) + 1) / 2).numpy()
    lq = ((box_blur(blobs(4, g, 24)) + 1) / 2).numpy()
    for i in range(4):
        write_png8(root / "hq" / f"cxr{i}.png", hq[i, 0])
        write_png16(root / "lq" / f"drr{i}.png", np.rint(lq[i, 0] * 65535).astype(np.uint16))
    write_png8(root / "hq" / "more" / "cxr0.png", hq[4, 0])  # same stem in a subfolder
    return {"root": root, "hq": root / "hq", "lq": root / "lq"}


# ------------------------------------------------------------------------------------------------ MUNIT


def test_munit_defaults_are_the_papers() -> None:
    """MUNIT (Huang et al. 2018): lambda_x = 10, lambda_c = lambda_s = 1, GAN 1; Adam 1e-4, (0.5, 0.999), wd 1e-4."""
    m = MUNITConfig()
    assert (m.gan_w, m.recon_x_w, m.recon_c_w, m.recon_s_w) == (1.0, 10.0, 1.0, 1.0)
    assert m.recon_x_cyc_w == 0.0 and m.style_dim == 8 and m.n_downsample == 2 and m.n_res == 4
    t = MUNITTrainConfig(hq_dir="h", lq_dir="l", output_dir="o")
    assert (t.lr, t.adam_beta1, t.adam_beta2, t.adam_weight_decay, t.batch_size) == (1e-4, 0.5, 0.999, 1e-4, 1)
    assert (t.lr_step_size, t.lr_gamma) == (100_000, 0.5)


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


def _pairs_ok(out: Path, names: list[str], half: int) -> None:
    assert sorted(p.name for p in (out / "lq").iterdir()) == sorted(names)
    assert sorted(p.name for p in (out / "hq").iterdir()) == sorted(names)
    for n in names:
        lq, hq = read_png16(out / "lq" / n), read_png16(out / "hq" / n)
        assert lq.dtype == np.uint16 and lq.shape == (half, half) and hq.shape == (2 * half, 2 * half)


@pytest.mark.slow
def test_munit_train_checkpoints_resume_and_pairs(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "munit_run"
    cfg = MUNITTrainConfig(
        hq_dir=str(folders["hq"]), lq_dir=str(folders["lq"]), output_dir=str(out), model=tiny_munit_cfg(),
        preprocess=PreprocessConfig(size=SIZE), batch_size=2, max_train_steps=3, num_workers=0,
        checkpointing_steps=1, checkpoints_total_limit=2, log_every=1, sample_every=2, progress=False,
    )  # fmt: skip
    model_dir = train_munit(cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    cfg.max_train_steps = 4
    model_dir = train_munit(cfg)  # resumes from checkpoint-3, one more step
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    info = json.loads((model_dir / "train_config.json").read_text())
    assert info["resumed_from"] == "checkpoint-3" and info["global_step"] == 4
    # the interrupted run ends where an uninterrupted one does: weights, optimiser, RNG and data order restored
    whole = MUNITTrainConfig.from_dict(cfg.to_dict() | {"output_dir": str(tmp_path / "whole"), "checkpointing_steps": 0})
    w_whole = load_file(train_munit(whole) / "munit.safetensors")
    w_resumed = load_file(model_dir / "munit.safetensors")
    assert w_whole.keys() == w_resumed.keys()
    assert all(torch.allclose(w_whole[k], w_resumed[k], atol=1e-6) for k in w_whole)

    p1 = munit_make_pairs(model_dir, folders["hq"], tmp_path / "p1", style="random", seed=7, batch_size=2)
    p2 = munit_make_pairs(model_dir, folders["hq"], tmp_path / "p2", style="random", seed=7, batch_size=5)
    expected = pair_names(sorted(folders["hq"].rglob("*.png")), folders["hq"])
    # the colliding stem "cxr0" keeps its folder in the name; the others are the HQ file names
    assert sorted(expected) == ["cxr0.png", "cxr1.png", "cxr2.png", "cxr3.png", "more__cxr0.png"]
    _pairs_ok(p1, expected, SIZE // 2)
    p1b = munit_make_pairs(model_dir, folders["hq"], tmp_path / "p1b", style="random", seed=7, batch_size=2)
    for n in expected:  # same seed -> same bytes; another batch size -> same styles (pixels up to float rounding)
        assert (p1 / "lq" / n).read_bytes() == (p1b / "lq" / n).read_bytes()
        diff = read_png16(p1 / "lq" / n).astype(int) - read_png16(p2 / "lq" / n).astype(int)
        assert np.abs(diff).max() <= 8
    p3 = munit_make_pairs(model_dir, folders["hq"], tmp_path / "p3", style="lq-extracted", lq_dir=folders["lq"])
    _pairs_ok(p3, expected, SIZE // 2)
    meta = json.loads((p3 / "pairs.json").read_text())
    assert meta["style"] == "lq-extracted" and all(r["style_source"] for r in meta["pairs"])
    with pytest.raises(ValueError, match="needs lq_dir"):
        munit_make_pairs(model_dir, folders["hq"], tmp_path / "p4", style="lq-extracted")
    with pytest.raises(ValueError, match="style must be one of"):
        munit_make_pairs(model_dir, folders["hq"], tmp_path / "p4", style="nope")  # type: ignore[arg-type]
    pairs = PairsDataset(p3, SIZE)  # DDPM-LQ's optional conditional stage 2 reads the same layout
    lq, hq = pairs[0]
    assert lq.shape == hq.shape == (1, SIZE, SIZE)


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


def test_ddpm_lq_config_errors() -> None:
    with pytest.raises(ValueError, match="allowed"):
        DDPMLQConfig(image_size=16, block_out_channels=(16,), down_block_types=("Nope",), up_block_types=("UpBlock2D",))
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        DDPMLQConfig(beta_schedule="cubic")
    assert DDPMLQConfig.from_dict(tiny_ddpm_cfg().to_dict()) == tiny_ddpm_cfg()


@pytest.mark.slow
def test_ddpm_lq_two_stages_resume_and_pairs(folders: dict[str, Path], tmp_path: Path) -> None:
    base = dict(
        lq_dir=str(folders["lq"]), model=tiny_ddpm_cfg(), preprocess=PreprocessConfig(size=SIZE), batch_size=2,
        num_workers=0, lr_warmup_steps=0, log_every=1, progress=False, checkpointing_steps=1,
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
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    w_resumed = load_file(m1 / unet_file)
    # the saved model is the EMA, not the raw weights of the last step (checkpoint-4 holds those)
    raw = load_file(tmp_path / "s1" / "checkpoint-4" / "model.safetensors")
    assert raw.keys() == w_resumed.keys() and any(not torch.equal(raw[k], w_resumed[k]) for k in raw)
    # the interrupted run ends where an uninterrupted one does (weights, optimiser, EMA, RNG, data order)
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

    x = blobs(1, torch.Generator().manual_seed(0))
    assert torch.equal(sdedit(u2, sched2, x, 0.0, 2), x)
    p1 = ddpm_make_pairs(m2, folders["hq"], tmp_path / "p1", strength=0.4, steps=2, seed=3, batch_size=2)
    p2 = ddpm_make_pairs(m2, folders["hq"], tmp_path / "p2", strength=0.4, steps=2, seed=3, batch_size=5)
    names = pair_names(sorted(folders["hq"].rglob("*.png")), folders["hq"])
    _pairs_ok(p1, names, SIZE // 2)
    for n in names:  # per-image noise: another batch size gives the same pixels up to float rounding
        diff = read_png16(p1 / "lq" / n).astype(int) - read_png16(p2 / "lq" / n).astype(int)
        assert np.abs(diff).max() <= 8
        assert np.array_equal(read_png16(p1 / "hq" / n), read_png16(p2 / "hq" / n))
    meta = json.loads((p1 / "pairs.json").read_text())
    assert meta["strength"] == 0.4 and meta["conditional"] is False

    # reading A: stage 2 conditioned on the HQ of a pairs folder; its make_pairs must feed the HQ as condition
    s3 = DDPMLQTrainConfig(
        output_dir=str(tmp_path / "s3"), pairs_dir=str(p1), lr=1e-2, max_train_steps=1, seed=2, **base
    )
    m3 = train_ddpm(s3, stage=2, init_from=m1)
    assert ddpm_lq.read_extra(m3)["conditional"] is True
    p3 = ddpm_make_pairs(m3, folders["hq"], tmp_path / "p3", strength=0.6, steps=2, seed=3, batch_size=8)
    assert json.loads((p3 / "pairs.json").read_text())["conditional"] is True
    u3, sched3, _ = ddpm_lq.load(m3)
    hq = read_pm1(p3 / "hq", names)
    gens = lambda: [torch.Generator().manual_seed(item_seed(3, i)) for i in range(len(names))]  # noqa: E731
    with_cond = F.avg_pool2d(sdedit(u3, sched3, hq, 0.6, 2, generator=gens(), condition=hq), 2)
    without = F.avg_pool2d(sdedit(u3, sched3, hq, 0.6, 2, generator=gens()), 2)
    written = read_pm1(p3 / "lq", names)
    assert (written - with_cond).abs().max() < 1e-3  # the pairs are the HQ-conditioned SDEdit...
    assert (written - without).abs().max() > 1e-2  # ...not the zero-condition one
