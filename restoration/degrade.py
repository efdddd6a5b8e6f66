"""Hand-made HQ -> LQ degradations for synthetic (LQ, HQ) pairs: bicubic baseline and a Real-ESRGAN-style chain.

All functions take HQ tensors (B, 1, H, W) in [-1, 1] and return LQ at (H/scale, W/scale), also in [-1, 1].
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES = ("area", "bilinear", "bicubic")


def _check_hq(hq: torch.Tensor, scale: int) -> None:
    if hq.ndim != 4 or hq.shape[1] != 1:
        raise ValueError(f"expected HQ of shape (B, 1, H, W), got {tuple(hq.shape)}")
    if scale < 1 or hq.shape[-1] % scale or hq.shape[-2] % scale:
        raise ValueError(f"HQ size {tuple(hq.shape[-2:])} must be divisible by scale {scale}")


def gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> torch.Tensor:
    """(k, k) normalised Gaussian; anisotropic when sigma_y != sigma_x, rotated by ``theta`` radians."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    r = (kernel_size - 1) / 2
    ax = torch.linspace(-r, r, kernel_size, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy  # rotate coordinates into the kernel's principal axes
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).float()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve (B, 1, H, W) with a (k, k) kernel, reflect padding (no dark border)."""
    k = kernel.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(xp, kernel.to(x)[None, None])


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (B, 1, H, W) with ``mode`` in RESIZE_MODES (antialiased when shrinking with bilinear/bicubic)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        if size[0] > x.shape[-2]:  # area upsampling is nearest: use bilinear instead
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def bicubic_degrade(hq: torch.Tensor, scale: int = 2, blur_sigma: float = 0.0) -> torch.Tensor:
    """Paper baseline: optional mild Gaussian blur, then antialiased bicubic downsampling by ``scale``."""
    _check_hq(hq, scale)
    x = hq
    if blur_sigma > 0:
        ks = 2 * math.ceil(3 * blur_sigma) + 1
        x = blur(x, gaussian_kernel(ks, blur_sigma))
    h, w = x.shape[-2:]
    lq = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    return lq.clamp(-1, 1)


# ------------------------------------------------------------------------------------ Real-ESRGAN chain


@dataclass
class ClassicalDegradationConfig:
    """Ranges of Real-ESRGAN's second-order degradation (noise sigma in 8-bit grey levels).

    Defaults follow Real-ESRGAN (Wang et al. 2021) minus the sinc filter and colour noise (grey images).
    """

    scale: int = 2
    # first order
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    aniso_prob: float = 0.5
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    jpeg_range: tuple[int, int] = (30, 95)
    # second order
    second_blur_prob: float = 0.8
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    noise_sigma2: tuple[float, float] = (1.0, 25.0)
    poisson_scale2: tuple[float, float] = (0.05, 2.5)
    jpeg_range2: tuple[int, int] = (30, 95)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        return asdict(self)


def _u(rng: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=torch.float64))


def _choice(rng: torch.Generator, options: tuple | list, probs: tuple[float, ...] | None = None) -> Any:
    if probs is None:
        i = int(torch.randint(len(options), (), generator=rng))
    else:
        i = int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=rng))
    return options[i]


def _blur_params(rng: torch.Generator, cfg: ClassicalDegradationConfig, sigma: tuple[float, float]) -> dict:
    k = int(_choice(rng, list(cfg.kernel_sizes)))
    sx = _u(rng, *sigma)
    aniso = _u(rng, 0, 1) < cfg.aniso_prob
    sy = _u(rng, *sigma) if aniso else sx
    theta = _u(rng, -math.pi, math.pi) if aniso else 0.0
    return {"kernel_size": k, "sigma_x": sx, "sigma_y": sy, "theta": theta}


def _resize_params(rng: torch.Generator, probs: tuple[float, ...], rng_range: tuple[float, float]) -> dict:
    kind = _choice(rng, ["up", "down", "keep"], probs)
    scale = _u(rng, 1.0, rng_range[1]) if kind == "up" else _u(rng, rng_range[0], 1.0) if kind == "down" else 1.0
    return {"scale": scale, "mode": _choice(rng, list(RESIZE_MODES))}


def _noise_params(rng: torch.Generator, cfg: ClassicalDegradationConfig, sig: tuple, pois: tuple) -> dict:
    seed = int(torch.randint(0, 2**31 - 1, (), generator=rng))
    if _u(rng, 0, 1) < cfg.gaussian_noise_prob:
        return {"kind": "gaussian", "sigma": _u(rng, *sig), "seed": seed}
    return {"kind": "poisson", "scale": _u(rng, *pois), "seed": seed}


def get_params(rng: torch.Generator, cfg: ClassicalDegradationConfig | None = None) -> dict[str, Any]:
    """Sample every random choice of one image's degradation chain (noise realisations via recorded seeds)."""
    cfg = cfg or ClassicalDegradationConfig()
    p: dict[str, Any] = {}
    p["blur1"] = _blur_params(rng, cfg, cfg.blur_sigma) if _u(rng, 0, 1) < cfg.blur_prob else None
    p["resize1"] = _resize_params(rng, cfg.resize_prob, cfg.resize_range)
    p["noise1"] = _noise_params(rng, cfg, cfg.noise_sigma, cfg.poisson_scale)
    p["jpeg1"] = int(round(_u(rng, *cfg.jpeg_range)))
    p["blur2"] = _blur_params(rng, cfg, cfg.blur_sigma2) if _u(rng, 0, 1) < cfg.second_blur_prob else None
    p["resize2"] = _resize_params(rng, cfg.resize_prob2, cfg.resize_range2)
    p["noise2"] = _noise_params(rng, cfg, cfg.noise_sigma2, cfg.poisson_scale2)
    p["jpeg2"] = int(round(_u(rng, *cfg.jpeg_range2)))
    p["final_mode"] = _choice(rng, list(RESIZE_MODES))
    p["jpeg_last"] = bool(_u(rng, 0, 1) < 0.5)  # Real-ESRGAN: final resize before or after the JPEG step
    return p


def add_noise(x01: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """Gaussian (sigma in grey levels /255) or Poisson (shot) noise on [0, 1] images, seeded by ``p['seed']``."""
    g = torch.Generator().manual_seed(int(p["seed"]))
    if p["kind"] == "gaussian":
        noise = torch.randn(x01.shape, generator=g, dtype=torch.float32) * (p["sigma"] / 255.0)
    elif p["kind"] == "poisson":
        vals = 255.0  # 8-bit photon budget as in Real-ESRGAN
        counts = torch.poisson((x01.clamp(0, 1) * vals).float().cpu(), generator=g)
        noise = (counts / vals - x01.float().cpu()) * p["scale"]
    else:
        raise ValueError(f"unknown noise kind {p['kind']!r}: expected one of gaussian, poisson")
    return (x01 + noise.to(x01)).clamp(0, 1)


def jpeg(x01: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip per image through Pillow (8-bit grey), deterministic for a given quality."""
    out = []
    for img in x01.detach().cpu().reshape(-1, *x01.shape[-2:]):
        a = np.rint(img.clamp(0, 1).numpy() * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0))
    return torch.stack(out).reshape(x01.shape).to(x01)


def apply_params(hq: torch.Tensor, p: dict[str, Any], scale: int = 2) -> torch.Tensor:
    """Apply one sampled chain deterministically to (1, 1, H, W) or (B, 1, H, W) in [-1, 1]."""
    _check_hq(hq, scale)
    h, w = hq.shape[-2:]
    x = (hq.float() + 1) / 2  # noise/JPEG are defined on [0, 1] intensities
    for stage in ("1", "2"):
        b = p[f"blur{stage}"]
        if b is not None:
            x = blur(x, gaussian_kernel(b["kernel_size"], b["sigma_x"], b["sigma_y"], b["theta"]))
        r = p[f"resize{stage}"]
        # first resize is relative to the current size, the second to the final LQ size (as in Real-ESRGAN)
        base_h, base_w = (x.shape[-2], x.shape[-1]) if stage == "1" else (h / scale, w / scale)
        size = (max(4, int(base_h * r["scale"])), max(4, int(base_w * r["scale"])))
        x = resize(x, size, r["mode"]).clamp(0, 1)
        x = add_noise(x, p[f"noise{stage}"])
        if stage == "1":
            x = jpeg(x, p["jpeg1"])
    final = (h // scale, w // scale)
    if p["jpeg_last"]:
        x = jpeg(resize(x, final, p["final_mode"]).clamp(0, 1), p["jpeg2"])
    else:
        x = resize(jpeg(x, p["jpeg2"]), final, p["final_mode"]).clamp(0, 1)
    return (x * 2 - 1).to(hq.dtype)


def classical_degrade(
    hq: torch.Tensor, rng: torch.Generator, cfg: ClassicalDegradationConfig | None = None
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Real-ESRGAN-style second-order degradation, one independently sampled chain per image.

    Returns:
        (lq, params): lq (B, 1, H/scale, W/scale) in [-1, 1]; params[i] reproduces image i via ``apply_params``.
    """
    cfg = cfg or ClassicalDegradationConfig()
    _check_hq(hq, cfg.scale)
    params = [get_params(rng, cfg) for _ in range(hq.shape[0])]
    lq = torch.cat([apply_params(hq[i : i + 1], params[i], cfg.scale) for i in range(hq.shape[0])])
    return lq, params
