"""DDPM-HQ restoration half: preprocessing, degradations, model/sampling, training/resume, metrics, enhance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import read_png16, write_png16
from restoration.ddpm_hq import (
    SCHEDULERS,
    DDPMHQConfig,
    ModelNotFoundError,
    build_unet,
    load_model,
    make_scheduler,
    save_model,
    training_loss,
    upsample_condition,
)
from restoration.ddpm_hq_sampling import restore
from restoration.degrade import ClassicalDegradationConfig, apply_params, bicubic_degrade, classical_degrade
from restoration.evaluate import evaluate_model, figure, nodule_contrast, psnr_ssim
from restoration.preprocess import (
    ImageFolderDataset,
    PreprocessConfig,
    list_images,
    load_grayscale,
    mhh_patient_of,
    normalize,
    resize_square,
    split_by_source,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MHH = SHARED_DATA / "cxr" / "mhh-covid-19"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def tiny_cfg(**kw) -> DDPMHQConfig:
    base = dict(lq_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    base.update(kw)
    return DDPMHQConfig(**base)


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) smooth sinusoid/blob images in [-1, 1]: learnable toy radiographs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = 0.5 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * x + rng.uniform(0, 1) * y))
        img += 0.4 * np.exp(-((x - rng.uniform(0.3, 0.7)) ** 2 + (y - rng.uniform(0.3, 0.7)) ** 2) / 0.02)
        out.append(np.clip(img, -1, 1))
    return torch.tensor(np.stack(out)[:, None], dtype=torch.float32)


def write_toy_folder(folder: Path, n: int = 6, size: int = 40) -> list[Path]:
    imgs = smooth_images(n, size)
    return [
        write_png16(folder / f"img{i}.png", np.rint((imgs[i, 0].numpy() + 1) / 2 * 65535).astype(np.uint16))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, DDPMHQConfig]:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    unet = build_unet(cfg)
    folder = tmp_path_factory.mktemp("model")
    save_model(folder, unet, cfg)
    return folder, cfg


# ----------------------------------------------------------------------------------------- preprocessing


def test_load_grayscale_png_jpg_and_errors(tmp_path):
    a16 = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    write_png16(tmp_path / "a.png", a16)
    g = load_grayscale(tmp_path / "a.png")
    assert g.dtype == np.float32 and g.shape == (12, 10)
    np.testing.assert_allclose(g, a16 / 65535.0, atol=1e-6)
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    b = load_grayscale(tmp_path / "b.jpg")
    assert b.shape == (8, 9) and 0.0 <= b.min() and b.max() <= 1.0
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError) as err:
        load_grayscale(tmp_path / "bad.png")
    assert str(err.value).startswith(str(tmp_path / "bad.png")) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no such image"):
        load_grayscale(tmp_path / "missing.png")


def test_load_grayscale_dicom_monochrome1_window(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = np.tile(np.linspace(0, 4000, 16).astype(np.uint16), (8, 1))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 2000  # values <1000 and >3000 saturate
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    img = load_grayscale(tmp_path / "x.dcm")
    assert img.shape == (8, 16) and img.dtype == np.float32
    assert img[0, 0] == pytest.approx(1.0) and img[0, -1] == pytest.approx(0.0)  # MONOCHROME1 inverted
    assert np.all(np.diff(img[0]) <= 1e-6) and img[0, 1] == pytest.approx(1.0)  # windowed: saturates
    assert pydicom is not None


def test_normalize_and_resize_ranges():
    rng = np.random.default_rng(0)
    img = rng.random((50, 70)).astype(np.float32) * 0.3 + 0.2
    img[0, 0] = 5.0  # outlier must not set the white point
    n = normalize(img, PreprocessConfig(low_pct=1, high_pct=99))
    assert n.dtype == np.float32 and n.min() == -1.0 and n.max() == 1.0
    assert (n == 1.0).mean() < 0.05
    assert np.all(normalize(np.full((5, 5), 0.3), PreprocessConfig()) == 0)
    for size in (16, 100):
        r = resize_square(n, size)
        assert r.shape == (size, size) and r.dtype == np.float32
        assert r.min() >= -1.0 and r.max() <= 1.0
    with pytest.raises(ValueError, match="low_pct"):
        PreprocessConfig(low_pct=60, high_pct=40)


def test_dataset_and_listing(tmp_path):
    paths = write_toy_folder(tmp_path / "sub", n=3, size=24)
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == sorted(paths)
    ds = ImageFolderDataset(paths, PreprocessConfig(size=16), augment=True)
    torch.manual_seed(0)
    x = ds[1]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert 1 in ds._cache  # cached preprocessed array
    plain = ImageFolderDataset(paths, PreprocessConfig(size=16))[1]
    assert not torch.equal(plain, torch.flip(plain, dims=[-1]))  # toy images are not symmetric
    assert (x - plain).abs().mean() < (torch.flip(plain, dims=[-1]) - plain).abs().mean()  # jitter is small, no flip


def test_split_no_leak_deterministic():
    paths = [Path(f"/x/p{g}_img{i}.png") for g in range(10) for i in range(g % 3 + 1)]
    group = lambda p: p.name.split("_")[0]  # noqa: E731
    tr, va = split_by_source(paths, 0.25, seed=3, group_of=group)
    assert sorted(tr + va) == sorted(paths) and not set(tr) & set(va)
    assert not {group(p) for p in tr} & {group(p) for p in va}
    assert len(va) >= 0.25 * len(paths) and tr
    assert split_by_source(list(reversed(paths)), 0.25, seed=3, group_of=group) == (tr, va)  # order-independent
    assert split_by_source(paths, 0.25, seed=4, group_of=group) != (tr, va)
    assert split_by_source(paths, 0.0, seed=3, group_of=group)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_source(paths, 1.0)


@pytest.mark.skipif(not (MHH / "data.csv").is_file(), reason="shared MHH COVID-19 data not available")
def test_mhh_patient_split_no_leak():
    paths = list_images(MHH)
    assert len(paths) == 198
    assert len({mhh_patient_of(p) for p in paths}) == 56
    tr, va = split_by_source(paths, 0.2, seed=0, group_of=mhh_patient_of)
    assert not {mhh_patient_of(p) for p in tr} & {mhh_patient_of(p) for p in va}
    assert len(va) >= 0.2 * len(paths) and len(tr) + len(va) == 198


# ---------------------------------------------------------------------------------------------- degradations


def test_bicubic_degrade_shape_and_range():
    hq = smooth_images(2, 32)
    lq = bicubic_degrade(hq, 2, blur_sigma=0.8)
    assert lq.shape == (2, 1, 16, 16) and lq.min() >= -1 and lq.max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        bicubic_degrade(torch.zeros(1, 1, 31, 31))


def test_classical_degrade_deterministic_and_params_recorded():
    hq = smooth_images(3, 32)
    cfg = ClassicalDegradationConfig(kernel_sizes=(5, 7))
    lq1, p1 = classical_degrade(hq, torch.Generator().manual_seed(7), cfg)
    lq2, p2 = classical_degrade(hq, torch.Generator().manual_seed(7), cfg)
    lq3, p3 = classical_degrade(hq, torch.Generator().manual_seed(8), cfg)
    assert lq1.shape == (3, 1, 16, 16) and lq1.min() >= -1 and lq1.max() <= 1
    assert torch.equal(lq1, lq2) and p1 == p2 and p1 != p3
    assert len(p1) == 3 and {"blur1", "resize1", "noise1", "jpeg1", "noise2", "jpeg2"} <= set(p1[0])
    json.dumps(p1)  # params are plain data, loggable
    assert torch.equal(apply_params(hq[1:2], p1[1], 2), lq1[1:2])  # params alone reproduce the image
    assert (lq1 - bicubic_degrade(hq)).abs().mean() > 0.01  # actually degraded beyond bicubic


# ---------------------------------------------------------------------------------------------- model/sampling


@pytest.mark.parametrize("s", [1, 4])
def test_shapes_lq16_to_hq32(s):
    cfg = tiny_cfg(space_to_depth=s)
    torch.manual_seed(0)
    unet = build_unet(cfg)
    assert unet.config.in_channels == 2 * s * s and unet.config.out_channels == s * s
    assert unet.config.sample_size == 32 // s and cfg.size_multiple == 2 * s
    lq = torch.rand(2, 1, 16, 16) * 2 - 1
    assert upsample_condition(lq, 2).shape == (2, 1, 32, 32)
    out = restore(unet, make_scheduler("ddim", cfg), lq, 2, torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all() and out.abs().max() <= 1
    odd = restore(unet, make_scheduler("ddim", cfg), torch.zeros(1, 1, 9, 7), 2, torch.Generator().manual_seed(0))
    assert odd.shape == (1, 1, 18, 14)  # padded internally to the UNet multiple, cropped back


def test_config_json_and_scheduler_errors(tmp_path):
    cfg = tiny_cfg(attention_levels=(False, True))
    cfg.save(tmp_path)
    assert DDPMHQConfig.load(tmp_path) == cfg and cfg.hq_size == 32
    with pytest.raises(ValueError, match="expected one of ddpm, ddim, dpmsolver\\+\\+"):
        make_scheduler("euler", cfg)
    with pytest.raises(ValueError, match="expected one of l1, l2"):
        tiny_cfg(loss="huber")
    with pytest.raises(ValueError, match=r"unknown DDPMHQConfig field 'lq_sise': expected one of lq_size, scale") as err:
        DDPMHQConfig.from_dict({**cfg.to_dict(), "lq_sise": 64})
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_training_loss_goes_down():
    cfg = tiny_cfg(lq_size=8, block_out_channels=(16, 32))
    torch.manual_seed(0)
    unet = build_unet(cfg)
    sched = make_scheduler("ddpm", cfg)
    hq = smooth_images(4, 16)
    lq = bicubic_degrade(hq)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        loss = training_loss(unet, sched, hq, lq, gen, loss="l1")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def _zero_output(unet: torch.nn.Module) -> torch.nn.Module:
    """Make the UNet predict exactly 0 everywhere (its last conv zeroed)."""
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    return unet


def test_residual_target_and_zero_residual_is_bicubic():
    cfg = tiny_cfg(residual_scale=4.0, prediction_type="sample")
    torch.manual_seed(0)
    unet = _zero_output(build_unet(cfg)).eval()
    hq = smooth_images(2, 32)
    lq = bicubic_degrade(hq)
    up = upsample_condition(lq)
    # sample prediction of a residual: the target is (HQ - bicubic) * scale, so a zero model's L1 loss is its mean
    gen = torch.Generator().manual_seed(0)
    loss = training_loss(unet, make_scheduler("ddpm", cfg), hq, lq, gen, residual_scale=4.0)
    assert loss.item() == pytest.approx(((hq - up).abs() * 4.0).mean().item(), rel=1e-5)
    # a model that adds no residual detail returns the bicubic upsample itself, not noise
    out = restore(unet, make_scheduler("ddim", cfg), lq, 4, torch.Generator().manual_seed(0), residual_scale=4.0)
    assert torch.allclose(out, up, atol=1e-5)
    with pytest.raises(ValueError, match="residual_scale"):
        tiny_cfg(residual_scale=-1.0)


class OracleUNet(torch.nn.Module):
    """Stands in for a perfectly trained DDPM-HQ UNet: returns the exact target for the HQ it was given.

    The target is computed from the noisy input and t the way ``training_loss`` defines it (x0 = HQ or the scaled
    residual over the upsampled condition; epsilon / v from x_t and the training schedule's alphas_cumprod).
    """

    def __init__(self, hq: torch.Tensor, cfg: DDPMHQConfig) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.hq, self.cfg = hq, cfg
        self.alphas_cumprod = make_scheduler("ddpm", cfg).alphas_cumprod.double()
        self.config = SimpleNamespace(block_out_channels=cfg.block_out_channels)
        self.device, self.dtype = torch.device("cpu"), torch.float32  # what ``restore`` asks a UNet for

    def forward(self, inp: torch.Tensor, t: torch.Tensor) -> object:
        from types import SimpleNamespace

        x_t, cond = inp[:, :1].double(), inp[:, 1:].double()
        h, w = self.hq.shape[-2:]
        hq = torch.nn.functional.pad(self.hq.double(), (0, x_t.shape[-1] - w, 0, x_t.shape[-2] - h), mode="replicate")
        x0 = (hq - cond) * self.cfg.residual_scale if self.cfg.residual_scale > 0 else hq
        ab = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        target = {"sample": x0, "epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
        return SimpleNamespace(sample=target[self.cfg.prediction_type].float())


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize(
    ("residual_scale", "prediction_type"), [(4.0, "sample"), (0.0, "sample"), (4.0, "epsilon"), (0.0, "epsilon")]
)
def test_oracle_model_reproduces_hq(name, residual_scale, prediction_type):
    # HQ full of fine detail: the residual over bicubic reaches |(HQ - up) * 4| >> 1, where rescaling would show
    hq = (torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.9
    lq = bicubic_degrade(hq)
    cfg = tiny_cfg(residual_scale=residual_scale, prediction_type=prediction_type)
    oracle = OracleUNet(hq, cfg)
    assert ((hq - upsample_condition(lq)) * residual_scale).abs().max() > 2 or residual_scale == 0
    for strength in (1.0, 0.5):
        out = restore(
            oracle, make_scheduler(name, cfg), lq, 4, torch.Generator().manual_seed(1), strength=strength,
            residual_scale=residual_scale,
        )  # fmt: skip
        err = (out - hq).abs().max().item()
        assert err < 1e-3, f"{name} {prediction_type} residual_scale={residual_scale} strength={strength}: {err}"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_sampling_deterministic(name, tiny_model):
    unet, cfg = load_model(tiny_model[0])
    lq = smooth_images(2, 16)
    a = restore(unet, make_scheduler(name, cfg), lq, 3, torch.Generator().manual_seed(5))
    b = restore(unet, make_scheduler(name, cfg), lq, 3, torch.Generator().manual_seed(5))
    c = restore(unet, make_scheduler(name, cfg), lq, 3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_partial_strength_sampling(name, tiny_model):
    unet, cfg = load_model(tiny_model[0])
    lq = smooth_images(2, 16)
    a = restore(unet, make_scheduler(name, cfg), lq, 6, torch.Generator().manual_seed(5), strength=0.5)
    b = restore(unet, make_scheduler(name, cfg), lq, 6, torch.Generator().manual_seed(5), strength=0.5)
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b) and torch.isfinite(a).all()
    # little noise added at low strength: the result stays close to the bicubic upsample it starts from
    low = restore(unet, make_scheduler(name, cfg), lq, 10, torch.Generator().manual_seed(5), strength=0.1)
    up = upsample_condition(lq)
    assert (low - up).abs().mean() < (a - up).abs().mean()
    with pytest.raises(ValueError, match="strength"):
        restore(unet, make_scheduler(name, cfg), lq, 2, strength=0.0)


def test_tiled_restore(tiny_model):
    unet, cfg = load_model(tiny_model[0])
    sched = make_scheduler("ddim", cfg)
    lq = smooth_images(1, 24)[:, :, :, :20]  # HQ 48 x 40: several 16 px tiles
    full = restore(unet, sched, lq, 2, torch.Generator().manual_seed(1))
    t1 = restore(unet, sched, lq, 2, torch.Generator().manual_seed(1), tile=16, overlap=4)
    t2 = restore(unet, sched, lq, 2, torch.Generator().manual_seed(1), tile=16, overlap=4)
    assert t1.shape == full.shape == (1, 1, 48, 40)
    assert torch.equal(t1, t2) and torch.isfinite(t1).all()
    big = restore(unet, sched, lq, 2, torch.Generator().manual_seed(1), tile=64)
    assert torch.equal(big, full)  # a tile covering the image is the untiled path


def test_save_load_roundtrip_and_missing(tmp_path, tiny_model):
    cfg = tiny_cfg()
    torch.manual_seed(1)
    unet = build_unet(cfg).eval()
    save_model(tmp_path / "m", unet, cfg)
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    from diffusers import DDPMScheduler

    saved_sched = DDPMScheduler.from_pretrained(tmp_path / "m" / "scheduler")  # diffusers-style scheduler folder
    assert saved_sched.config.num_train_timesteps == cfg.num_train_timesteps
    assert saved_sched.config.beta_schedule == cfg.beta_schedule
    loaded, cfg2 = load_model(tmp_path / "m")
    assert cfg2 == cfg
    lq = smooth_images(1, 16)
    # the weights round-trip bit for bit...
    sd, sd2 = unet.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    # ...and sample the same; two model instances may differ in the last float bits (BLAS results depend on
    # buffer alignment), so instances are compared to float precision and each instance exactly with itself
    sched = make_scheduler("ddim", cfg)
    a = restore(unet, sched, lq, 3, torch.Generator().manual_seed(2))
    b = restore(loaded, sched, lq, 3, torch.Generator().manual_seed(2))
    b2 = restore(loaded, sched, lq, 3, torch.Generator().manual_seed(2))
    assert torch.allclose(a, b, atol=1e-4) and torch.equal(b, b2)
    with pytest.raises(ModelNotFoundError) as err:
        load_model(tmp_path / "nothing")
    msg = str(err.value)
    assert "\n" not in msg and "train one with" in msg and "diffusionxray train ddpm-hq" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="missing"):
        load_model(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- training run


def test_train_checkpoint_limit_and_exact_resume(tmp_path):
    from safetensors.torch import load_file

    from restoration.train_ddpm_hq import TrainConfig, train
    from restoration.training_setup import checkpoint_dirs as list_checkpoints

    write_toy_folder(tmp_path / "hq", n=6, size=40)
    base = dict(
        hq_dir=str(tmp_path / "hq"), lq_size=8, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, batch_size=4, lr_scheduler="constant", lr_warmup_steps=0,
        validation_steps=0, cpu=True, progress=False, log_every=1, val_fraction=0.34,
    )  # fmt: skip
    a = train(TrainConfig(output_dir=str(tmp_path / "a"), max_train_steps=4, checkpointing_steps=0, **base))
    out = tmp_path / "b"
    ck = dict(checkpointing_steps=1, checkpoints_total_limit=2)
    train(TrainConfig(output_dir=str(out), max_train_steps=2, **ck, **base))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    train(TrainConfig(output_dir=str(out), max_train_steps=4, resume=True, **ck, **base))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]  # limit respected
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # resumed at step 3, no step repeated
    wa = load_file(a / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # optimizer/EMA/RNG/data order restored exactly
    raw = load_file(out / "checkpoint-4" / "model.safetensors")  # accelerate's copy of the raw training weights
    assert raw.keys() == wb.keys() and any(not torch.equal(raw[k], wb[k]) for k in raw)  # use_ema: the EMA is saved
    assert json.loads((out / "train_config.json").read_text())["use_ema"] is True
    from restoration.pipeline_ddpm_hq import load_pipeline

    cfg = load_pipeline(out).model_config()  # the run folder is a DDPMHQPipeline folder
    assert cfg.hq_size == 16 and cfg.preprocess["size"] == 16


def _fake_pairs_folder(root: Path, n_patients: int = 4, per_patient: int = 2) -> Path:
    """An MHH-like source folder (png/ + data.csv) and a pairs folder made from it (windowed 16-bit PNGs)."""
    src = root / "mhh"
    rows = ["image_id,patient_id"]
    records = []
    rng = np.random.default_rng(0)
    for k in range(n_patients * per_patient):
        image_id, patient = f"img{k:02d}", f"pat{k % n_patients}"  # a patient's images are not adjacent
        rows.append(f"{image_id},{patient}")
        write_png16(src / "png" / f"{image_id}.png", (rng.random((20, 20)) * 65535).astype(np.uint16))
        # pairs hold windowed images; these use only the middle of the range, which a 2nd window would stretch
        hq = 0.5 + 0.25 * smooth_images(1, 32, seed=k)[0, 0].numpy()  # in [0.25, 0.75]
        write_png16(root / "pairs" / "hq" / f"{image_id}.png", np.rint(hq * 65535).astype(np.uint16))
        lq = bicubic_degrade(torch.from_numpy(hq * 2 - 1)[None, None].float())[0, 0].numpy()
        write_png16(root / "pairs" / "lq" / f"{image_id}.png", np.rint((lq + 1) / 2 * 65535).astype(np.uint16))
        records.append({"name": f"{image_id}.png", "hq_source": str(src / "png" / f"{image_id}.png")})
    (src / "data.csv").write_text("\n".join(rows) + "\n")
    (root / "pairs" / "pairs.json").write_text(json.dumps({"method": "test", "pairs": records}))
    return root / "pairs"


def test_pairs_dir_linear_mapping_and_patient_split(tmp_path):
    from restoration.pairs import in_pairs_folder, source_record
    from restoration.train_ddpm_hq import PairSource, TrainConfig, group_function, match_lq_paths, train

    pairs = _fake_pairs_folder(tmp_path)
    assert source_record("x.png", tmp_path / "mhh" / "png" / "img05.png")["patient"] == "pat1"
    assert "patient" not in source_record("x.png", pairs / "hq" / "img05.png")
    assert in_pairs_folder(pairs / "lq" / "img00.png") and not in_pairs_folder(tmp_path / "mhh" / "png" / "img00.png")
    cfg = TrainConfig(
        hq_dir=str(pairs / "hq"), lq_dir=str(pairs / "lq"), pair_source="pairs_dir", output_dir=str(tmp_path / "m"),
        lq_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, batch_size=2,
        max_train_steps=1, checkpointing_steps=0, validation_steps=0, cpu=True, progress=False,
        val_fraction=0.25, lr_warmup_steps=0,
    )  # fmt: skip
    paths = list_images(pairs / "hq")
    groups = group_function(cfg, paths)
    assert {groups(p) for p in paths} == {f"patient:pat{i}" for i in range(4)}  # from pairs.json -> data.csv
    tr, va = split_by_source(paths, cfg.val_fraction, cfg.split_seed, groups)
    assert va and not {groups(p) for p in tr} & {groups(p) for p in va}
    with pytest.raises(ValueError, match="group_by=mhh"):  # the pair files alone name no patient
        group_function(TrainConfig(hq_dir=str(pairs / "hq"), group_by="mhh"), paths)
    # pairs are windowed already: mapped linearly, so the pair's value range survives (no second window)
    src = PairSource(cfg, paths[:1], match_lq_paths(paths[:1], pairs / "hq", pairs / "lq"))
    hq, lq = src.batch([0], torch.Generator(), augment=False)
    png = read_png16(paths[0]).astype(np.float64) / 65535 * 2 - 1
    assert torch.allclose(hq[0, 0].double(), torch.from_numpy(resize_square(png, 32)).double(), atol=1e-5)
    assert -0.55 < hq.min() and hq.max() < 0.55 and -0.6 < lq.min() and lq.max() < 0.6
    # the model folder records the split by source patient
    model = train(cfg)
    split = json.loads((model / "split.json").read_text())
    assert split["group_by"] == "auto" and split["train"]["sources"] and split["val"]["sources"]
    assert not set(split["train"]["groups"]) & set(split["val"]["groups"])
    assert all(s.startswith(str(tmp_path / "mhh")) for s in split["train"]["sources"] + split["val"]["sources"])


# ---------------------------------------------------------------------------------------------- metrics/enhance


def test_psnr_ssim_and_nodule_contrast(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((32, 32))
    p, s = psnr_ssim(img, img)
    assert math.isinf(p) and s == pytest.approx(1.0)
    p2, s2 = psnr_ssim(np.clip(img + 0.05, 0, 1), img)
    assert 20 < p2 < 40 and s2 < 1
    yy, xx = np.mgrid[0:32, 0:32]
    fp = (yy - 16) ** 2 + (xx - 16) ** 2 <= 9
    blob = np.where(fp, 0.8, 0.3)
    assert nodule_contrast(blob, fp, ring=3) == pytest.approx(0.5)
    t = torch.zeros(2, 1, 16, 16)
    path = figure(t[:, :, :8, :8], t, t, tmp_path / "fig.png")
    with Image.open(path) as im:
        assert im.size[0] > 3 * 16 and im.size[1] >= 2 * 16


def test_enhance_and_evaluate(tmp_path, tiny_model):
    from restoration.enhance import enhance_folder

    model_dir, _ = tiny_model
    drr = (np.random.default_rng(0).random((20, 12)) * 65535).astype(np.uint16)
    write_png16(tmp_path / "in" / "sub" / "drr.png", drr)
    write_png16(tmp_path / "in" / "b.png", np.full((8, 8), 1000, np.uint16))
    out = enhance_folder(model_dir, tmp_path / "in", tmp_path / "out", steps=2, progress=False, tile=16, overlap=4)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in out] == ["b.png", "sub/drr.png"]
    # inputs are resized to the model's scale (longer side lq_size = 16, aspect kept), then restored 2x
    assert read_png16(out[1]).shape == (32, 20) and read_png16(out[0]).shape == (32, 32)
    info = json.loads((tmp_path / "out" / "enhance.json").read_text())
    assert info["lq_size"] == 16 and info["scale"] == 2 and info["steps"] == 2
    assert info["files"][1] == {
        "input": "sub/drr.png", "output": "sub/drr.png", "input_size": [20, 12], "model_input_size": [16, 10],
        "output_size": [32, 20],
    }  # fmt: skip
    again = enhance_folder(model_dir, tmp_path / "in", tmp_path / "out2", steps=2, progress=False, tile=16, overlap=4)
    assert np.array_equal(read_png16(again[1]), read_png16(out[1]))
    native = enhance_folder(model_dir, tmp_path / "in", tmp_path / "o3", steps=1, progress=False, input_size=None)
    assert read_png16(native[1]).shape == (40, 24)  # opt-out: native size
    hq_paths = write_toy_folder(tmp_path / "hq", n=2, size=40)
    r = evaluate_model(model_dir, hq_paths, steps=2, scheduler="ddim", figure_path=tmp_path / "e.png")
    assert r["n"] == 2 and r["bicubic"]["psnr"] > 20 and np.isfinite(r["model"]["psnr"])
    assert (tmp_path / "e.png").is_file()
    assert r["seconds"]["total"] > 0 and r["seconds"]["per_image"] == pytest.approx(r["seconds"]["total"] / 2)


def test_enhancer_resizes_to_model_scale_and_scales_labels(tiny_model):
    from data.records import NoduleLabel, bbox_from_mask
    from pipeline.enhancer import EnhanceConfig, Enhancer
    from restoration.enhance import conditioning_image, model_input

    model_dir, cfg = tiny_model
    enh = Enhancer(EnhanceConfig(str(model_dir), steps=1))
    assert enh.input_size == cfg.lq_size == 16 and enh.config.input_size == 16 and len(enh.config.weights_sha256) == 64
    rng = np.random.default_rng(0)
    drr = (rng.random((40, 24)) * 65535).astype(np.uint16)  # 40 x 24 -> model input 16 x 10 -> output 32 x 20
    out = enh(drr, seed=3)
    assert out.shape == enh.output_size(drr.shape) == (32, 20) and out.dtype == np.uint16
    assert np.array_equal(enh(drr, seed=3), out)
    sx, sy = enh.factors(drr.shape)
    assert (sx, sy) == (20 / 24, 32 / 40)
    yy, xx = np.mgrid[:40, :24]
    fp = (yy - 20) ** 2 + (xx - 10) ** 2 <= 16
    label = NoduleLabel(1, bbox_from_mask(fp), fp, attributes={"footprint_px": int(fp.sum())})
    scaled = enh.scale_label(label, (40, 24))
    x, y, w, h = label.bbox_xywh
    assert scaled.bbox_xywh == pytest.approx((x * sx, y * sy, w * sx, h * sy))
    assert scaled.footprint.shape == (32, 20) and scaled.attributes["drr_bbox_xywh"] == list(label.bbox_xywh)
    fx, fy, fw, fh = bbox_from_mask(scaled.footprint)  # the resampled footprint sits where the scaled box does
    assert abs(fx - x * sx) <= 1 and abs(fy - y * sy) <= 1 and abs(fw - w * sx) <= 1.5 and abs(fh - h * sy) <= 1.5
    assert enh.scale_label(NoduleLabel(2, label.bbox_xywh), (40, 24), out.shape).bbox_xywh == scaled.bbox_xywh
    # an integer factor replicates footprint pixels exactly (8 px -> 16 px model input -> 32 px: 4x)
    small = np.zeros((8, 8), bool)
    small[2:4, 5] = True
    s4 = enh.scale_label(NoduleLabel(3, bbox_from_mask(small), small), small.shape)
    assert np.array_equal(s4.footprint, np.kron(small, np.ones((4, 4), bool))) and s4.bbox_xywh == (20, 8, 4, 8)
    # a tiny footprint on a shrinking image keeps at least one pixel
    big = np.zeros((64, 64), bool)
    big[30, 30] = True
    assert enh.scale_label(NoduleLabel(4, bbox_from_mask(big), big), big.shape).footprint.sum() == 1
    # what the model is conditioned on, at output size (for before/after comparisons)
    assert model_input(drr / 65535.0, enh.preprocess, 16).shape == (16, 10)
    assert conditioning_image(drr / 65535.0, enh.preprocess, 16, 2).shape == out.shape


def test_evaluate_sampler_sweep_timing_and_pairs(tmp_path, tiny_model):
    from restoration.evaluate import SamplerSpec, evaluate_samplers

    model_dir, _ = tiny_model
    hq_paths = write_toy_folder(tmp_path / "hq", n=3, size=40)
    specs = [SamplerSpec("ddim", 2), SamplerSpec.parse("ddpm:8"), SamplerSpec.parse("dpmsolver++:4:0.5")]
    r = evaluate_samplers(model_dir, hq_paths, specs, batch_size=2)
    assert [x["sampler"] for x in r["runs"]] == ["ddim:2", "ddpm:8", "dpmsolver++:4:0.5"]
    assert [x["steps_run"] for x in r["runs"]] == [2, 8, 2]
    assert all(x["bicubic"] == r["bicubic"] and x["n"] == 3 for x in r["runs"])  # same pairs for every sampler
    sec = {x["sampler"]: x["seconds"]["per_image"] for x in r["runs"]}
    assert sec["ddpm:8"] > sec["ddim:2"] > 0  # 8 UNet passes cost more than 2
    assert all(len(x["per_image"]) == 3 and x["per_image"][0]["seconds"] > 0 for x in r["runs"])
    with pytest.raises(ValueError, match="expected one of ddpm, ddim, dpmsolver"):
        SamplerSpec.parse("euler:20")
    with pytest.raises(ValueError, match="scheduler:steps"):
        SamplerSpec.parse("ddim")
    # a pairs folder is detected and mapped linearly (HQ and LQ alike): the references keep the PNG values
    pairs = _fake_pairs_folder(tmp_path / "p", n_patients=1, per_patient=2)
    hq, lq = list_images(pairs / "hq"), list_images(pairs / "lq")
    det = evaluate_model(model_dir, hq, lq, steps=1)
    win = evaluate_model(model_dir, hq, lq, steps=1, prewindowed=False)
    lin = evaluate_model(model_dir, hq, lq, steps=1, prewindowed=True)
    assert det["bicubic"] == lin["bicubic"] != win["bicubic"]
    assert lin["bicubic"]["psnr"] > 25  # LQ is HQ's bicubic degradation: only a double window would break that


def test_training_seed_streams_are_spawned_children():
    """Each consumer of a run's randomness has its own SeedSequence child: no hand-made seed offsets."""
    from restoration.training_setup import SEED_STREAMS, stream_seed

    children = np.random.SeedSequence(5).spawn(len(SEED_STREAMS))
    for i, name in enumerate(SEED_STREAMS):
        assert stream_seed(5, name) == int(children[i].generate_state(1, dtype=np.uint64)[0] % (2**63))
    seeds = [stream_seed(5, name) for name in SEED_STREAMS] + [stream_seed(5, "train", p) for p in range(3)]
    assert len(set(seeds)) == len(seeds)  # per stream and per process
    assert stream_seed(6, "validation") != stream_seed(5, "validation")
