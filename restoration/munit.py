"""MUNIT (Huang et al., ECCV 2018) for unpaired HQ <-> LQ radiograph translation, written from the paper.

Domain ``a`` is the high-quality domain (real chest X-rays), domain ``b`` the low-quality one (our DRRs). Each
domain has a generator (content encoder, style encoder, AdaIN decoder) and a multi-scale LSGAN discriminator.
DiffusionXRay uses the HQ -> LQ direction to *degrade* real radiographs into DRR-like images, giving aligned
(LQ, HQ) pairs for DDPM-HQ. Images are (B, C, H, W) in [-1, 1]; H and W must be multiples of 2**n_downsample.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "munit.safetensors"
CONFIG_NAME = "munit_config.json"
DOMAINS = ("a", "b")
Domain = Literal["a", "b"]


@dataclass
class MUNITConfig:
    """Architecture and loss weights: MUNIT's losses and layout, greyscale, at a compact CPU width.

    The defaults are a narrow MUNIT (dim 12, 3 residual blocks, 3x3 upsampling convs, discriminator width 16) so
    that a training step on a batch of 4 crops of 128 px takes a few seconds and the translation of a whole 512 px
    image about a second on one CPU core (``benchmarks/degraders_speed.py``); the network is fully convolutional (no attention, no fully connected layer on the image), so weights
    trained on crops apply to whole images. ``MUNITConfig.paper()`` is the published size (dim 64, 4 residual
    blocks, 5x5 upsampling convs, discriminator width 64, MLP 256) for GPU users.

    Args:
        in_channels: image channels (1 for radiographs).
        dim: channels after the first generator conv; doubled at each content downsampling.
        n_downsample: stride-2 convs in the content encoder (mirrored by the decoder's upsamplings).
        n_res: residual blocks in the content encoder and in the decoder.
        up_kernel: kernel of the decoder's upsampling convs (MUNIT: 5).
        style_dim: length of the style code.
        style_n_downsample: stride-2 convs in the style encoder (channels double for the first two only).
        mlp_dim: hidden width of the MLP mapping a style code to AdaIN parameters.
        dis_dim: channels of the first discriminator conv; doubled at each further layer.
        dis_n_layer: stride-2 convs per discriminator scale.
        n_scales: discriminator scales (input halved by average pooling between scales).
        gan_w: adversarial loss weight.
        recon_x_w: within-domain image reconstruction (L1) weight.
        recon_s_w: style-code reconstruction (L1) weight.
        recon_c_w: content-code reconstruction (L1) weight.
        recon_x_cyc_w: explicit cycle reconstruction x -> other domain -> x (L1) weight; 0 disables it.
        lowpass_w: weight of an L1 loss between each image and its translation, both average-pooled by
            ``lowpass_factor`` (0 disables it). Not in MUNIT: MUNIT's losses leave the translation's intensity
            polarity free, and a CPU-budget run (636 steps on real data) learnt HQ -> LQ with inverted lungs
            (correlation -0.41 with the HQ); DiffusionXRay needs LQ aligned with its HQ, so the coarse intensities
            are tied and only texture/detail is translated.
        lowpass_factor: average-pooling factor of that loss (8: 16 x 16 for 128 px crops).
    """

    in_channels: int = 1
    dim: int = 12
    n_downsample: int = 2
    n_res: int = 3
    up_kernel: int = 3
    style_dim: int = 8
    style_n_downsample: int = 4
    mlp_dim: int = 128
    dis_dim: int = 16
    dis_n_layer: int = 4
    n_scales: int = 3
    gan_w: float = 1.0
    recon_x_w: float = 10.0
    recon_s_w: float = 1.0
    recon_c_w: float = 1.0
    recon_x_cyc_w: float = 0.0
    lowpass_w: float = 2.0
    lowpass_factor: int = 8

    def __post_init__(self) -> None:
        positive = ("in_channels", "dim", "style_dim", "mlp_dim", "dis_dim", "dis_n_layer", "n_scales", "up_kernel")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MUNITConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_downsample", "n_res", "style_n_downsample"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"MUNITConfig.{name} must be >= 0, got {getattr(self, name)}")
        if int(self.lowpass_factor) < 1:
            raise ValueError(f"MUNITConfig.lowpass_factor must be >= 1, got {self.lowpass_factor}")
        for name in ("gan_w", "recon_x_w", "recon_s_w", "recon_c_w", "recon_x_cyc_w", "lowpass_w"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"MUNITConfig.{name} must be >= 0, got {getattr(self, name)}")

        if self.up_kernel % 2 == 0:
            raise ValueError(f"MUNITConfig.up_kernel must be odd (same-size convs), got {self.up_kernel}")

    @classmethod
    def paper(cls, **overrides: Any) -> MUNITConfig:
        """The published MUNIT size (Huang et al. 2018): dim 64, 4 residual blocks, 5x5 upsampling, D width 64."""
        return cls(**({"dim": 64, "n_res": 4, "up_kernel": 5, "mlp_dim": 256, "dis_dim": 64} | overrides))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], section: str = "") -> MUNITConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings): unknown keys and wrong types are one line."""
        from data.settings import load_settings

        return load_settings(cls, d, section=section)


# ------------------------------------------------------------------------------------------------ blocks


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Conv with reflect padding (no dark frame at the borders); 'same' size at stride 1, halved at stride 2."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, padding_mode="reflect")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation, with norm in {"in", "ln", "none"} and activation in {"relu", "lrelu", "none"}."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, norm: str = "in", act: str = "relu"
    ) -> None:
        layers: list[nn.Module] = [_conv(in_ch, out_ch, kernel, stride)]
        if norm == "in":
            layers.append(nn.InstanceNorm2d(out_ch))  # no affine: content codes carry no style statistics
        elif norm == "ln":
            layers.append(nn.GroupNorm(1, out_ch))  # layer norm over (C, H, W) with per-channel affine
        elif norm != "none":
            raise ValueError(f"unknown norm {norm!r}; allowed: 'in', 'ln', 'none'")
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "lrelu":
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        elif act != "none":
            raise ValueError(f"unknown activation {act!r}; allowed: 'relu', 'lrelu', 'none'")
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual block of two 3x3 convs with instance norm (content encoder)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(ch, ch, 3), ConvNormAct(ch, ch, 3, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def adain(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance norm: normalise each channel, then scale by ``1 + gamma`` and shift by ``beta`` (B, C).

    Deliberate deviation from MUNIT, whose MLP outputs the scale itself (``gamma * norm(x) + beta``): with
    ``1 + gamma`` a freshly initialised MLP (outputs near 0) starts at identity scaling instead of near-zero
    scaling that would wipe out the content features; the family of functions it can express is the same.

    Args:
        x: (B, C, H, W) features.
        gamma: (B, C) scale offsets (scale = 1 + gamma).
        beta: (B, C) shifts.
        eps: instance-norm epsilon.
    """
    return F.instance_norm(x, eps=eps) * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]


class AdaINResBlock(nn.Module):
    """Residual block of two 3x3 convs normalised by AdaIN; takes 4 * ch AdaIN parameters per sample."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ch = ch
        self.conv1 = _conv(ch, ch, 3)
        self.conv2 = _conv(ch, ch, 3)

    @property
    def n_params(self) -> int:
        """Number of AdaIN parameters (gamma, beta for each of the two convs)."""
        return 4 * self.ch

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = params.split(self.ch, dim=1)
        h = F.relu(adain(self.conv1(x), g1, b1))
        return x + adain(self.conv2(h), g2, b2)


# -------------------------------------------------------------------------------------------- generator


class ContentEncoder(nn.Module):
    """Downsampling convs + residual blocks, all instance-normalised: a spatial, style-free content code."""

    def __init__(self, cfg: MUNITConfig) -> None:
        super().__init__()
        ch = cfg.dim
        layers: list[nn.Module] = [ConvNormAct(cfg.in_channels, ch, 7)]
        for _ in range(cfg.n_downsample):
            layers.append(ConvNormAct(ch, 2 * ch, 4, stride=2))
            ch *= 2
        layers += [ResBlock(ch) for _ in range(cfg.n_res)]
        self.net = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StyleEncoder(nn.Module):
    """Downsampling convs (no normalisation: it would erase style) + global average pool + linear -> (B, style_dim)."""

    def __init__(self, cfg: MUNITConfig) -> None:
        super().__init__()
        ch = cfg.dim
        layers: list[nn.Module] = [ConvNormAct(cfg.in_channels, ch, 7, norm="none")]
        for i in range(cfg.style_n_downsample):
            out = 2 * ch if i < 2 else ch
            layers.append(ConvNormAct(ch, out, 4, stride=2, norm="none"))
            ch = out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, cfg.style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


class Decoder(nn.Module):
    """AdaIN residual blocks (parameters from an MLP on the style code), upsampling + layer-norm convs, tanh."""

    def __init__(self, cfg: MUNITConfig, content_channels: int) -> None:
        super().__init__()
        ch = content_channels
        self.res = nn.ModuleList(AdaINResBlock(ch) for _ in range(cfg.n_res))
        n_adain = sum(b.n_params for b in self.res)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.style_dim, cfg.mlp_dim),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.mlp_dim, cfg.mlp_dim),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.mlp_dim, max(n_adain, 1)),
        )
        up: list[nn.Module] = []
        for _ in range(cfg.n_downsample):
            # nearest upsampling + conv instead of transposed convs: no checkerboard artefacts.
            up += [nn.Upsample(scale_factor=2, mode="nearest"), ConvNormAct(ch, ch // 2, cfg.up_kernel, norm="ln")]
            ch //= 2
        up += [_conv(ch, cfg.in_channels, 7), nn.Tanh()]
        self.up = nn.Sequential(*up)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = content
        if self.res:
            params = self.mlp(style)
            offset = 0
            for block in self.res:
                h = block(h, params[:, offset : offset + block.n_params])
                offset += block.n_params
        return self.up(h)


class Generator(nn.Module):
    """One domain's auto-encoder: content encoder, style encoder and AdaIN decoder."""

    def __init__(self, cfg: MUNITConfig) -> None:
        super().__init__()
        self.enc_content = ContentEncoder(cfg)
        self.enc_style = StyleEncoder(cfg)
        self.dec = Decoder(cfg, self.enc_content.out_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content code (B, C', H', W'), style code (B, style_dim)) of images ``x``."""
        return self.enc_content(x), self.enc_style(x)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] from a content code and a style code."""
        return self.dec(content, style)


# ---------------------------------------------------------------------------------------- discriminator


class MultiScaleDiscriminator(nn.Module):
    """``n_scales`` PatchGAN-style discriminators on the image, its 2x and 4x (...) average-pooled versions."""

    def __init__(self, cfg: MUNITConfig) -> None:
        super().__init__()
        self.nets = nn.ModuleList(self._one_scale(cfg) for _ in range(cfg.n_scales))
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _one_scale(cfg: MUNITConfig) -> nn.Sequential:
        ch = cfg.dis_dim
        layers: list[nn.Module] = [ConvNormAct(cfg.in_channels, ch, 4, stride=2, norm="none", act="lrelu")]
        for _ in range(cfg.dis_n_layer - 1):
            layers.append(ConvNormAct(ch, 2 * ch, 4, stride=2, norm="none", act="lrelu"))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch logits at every scale, finest first."""
        outs = []
        for i, net in enumerate(self.nets):
            if i:
                x = self.down(x)
            outs.append(net(x))
        return outs

    def loss_d(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """LSGAN discriminator loss summed over scales: fakes -> 0, reals -> 1."""
        return sum(
            (f.pow(2).mean() + (r - 1).pow(2).mean() for f, r in zip(self(fake), self(real), strict=True)),
            torch.zeros((), device=fake.device),
        )

    def loss_g(self, fake: torch.Tensor) -> torch.Tensor:
        """LSGAN generator loss summed over scales: fakes -> 1."""
        return sum(((f - 1).pow(2).mean() for f in self(fake)), torch.zeros((), device=fake.device))


# ------------------------------------------------------------------------------------------------ model


def _init_weights(module: nn.Module, leak: float) -> None:
    """Kaiming-normal convs/linears (zero bias), as in MUNIT's published settings."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=leak, mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MUNIT(nn.Module):
    """Two MUNIT generators (``gen_a``: HQ domain, ``gen_b``: LQ domain) and their discriminators.

    ``forward(x_a, x_b, mode)`` dispatches to :meth:`gen_losses` / :meth:`dis_loss` so the whole step runs
    through ``forward`` (needed for DistributedDataParallel's gradient synchronisation).
    """

    def __init__(self, cfg: MUNITConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MUNITConfig()
        self.gen_a = Generator(self.cfg)
        self.gen_b = Generator(self.cfg)
        self.dis_a = MultiScaleDiscriminator(self.cfg)
        self.dis_b = MultiScaleDiscriminator(self.cfg)
        _init_weights(self.gen_a, 0.0)
        _init_weights(self.gen_b, 0.0)
        _init_weights(self.dis_a, 0.2)
        _init_weights(self.dis_b, 0.2)

    # -- parameters / helpers

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of both generators (for the G optimiser)."""
        yield from self.gen_a.parameters()
        yield from self.gen_b.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of both discriminators (for the D optimiser)."""
        yield from self.dis_a.parameters()
        yield from self.dis_b.parameters()

    def _gen(self, domain: Domain) -> Generator:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; allowed: 'a' (HQ), 'b' (LQ)")
        return self.gen_a if domain == "a" else self.gen_b

    def check_images(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise ValueError unless ``x`` is (B, in_channels, H, W) with H, W multiples of 2**n_downsample."""
        m = 2**self.cfg.n_downsample
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"{name}: expected (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"{name}: H and W must be multiples of {m} (2**n_downsample), got {tuple(x.shape[-2:])}")

    def sample_style(
        self, n: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` style codes from N(0, I) (drawn on ``generator``'s device, then moved to ``device``)."""
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, self.cfg.style_dim, generator=generator, device=gen_device)
        return z.to(device) if device is not None else z

    def _style_for(
        self, style: torch.Tensor | None, n: int, ref: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if style is None:
            return self.sample_style(n, ref.device, generator).to(ref.dtype)
        s = style.to(device=ref.device, dtype=ref.dtype)
        if s.ndim == 1:
            s = s[None]
        if s.ndim != 2 or s.shape[1] != self.cfg.style_dim or s.shape[0] not in (1, n):
            raise ValueError(
                f"style must be (style_dim,), (1, style_dim) or (B, style_dim) with style_dim={self.cfg.style_dim} "
                f"and B={n}, got {tuple(style.shape)}"
            )
        return s.expand(n, -1)

    # -- inference

    def encode_style(self, x: torch.Tensor, domain: Domain = "b") -> torch.Tensor:
        """Style codes (B, style_dim) of images ``x`` from ``domain`` ('b' = LQ by default)."""
        self.check_images(x)
        return self._gen(domain).enc_style(x)

    def encode_content(self, x: torch.Tensor, domain: Domain = "a") -> torch.Tensor:
        """Content codes of images ``x`` from ``domain`` ('a' = HQ by default)."""
        self.check_images(x)
        return self._gen(domain).enc_content(x)

    def translate(
        self,
        x: torch.Tensor,
        source: Domain,
        style: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Translate ``x`` from ``source`` to the other domain with a given or N(0, I)-sampled target style."""
        self.check_images(x)
        target = "b" if source == "a" else "a"
        content = self._gen(source).enc_content(x)
        return self._gen(target).decode(content, self._style_for(style, x.shape[0], x, generator))

    def translate_hq_to_lq(
        self, x_hq: torch.Tensor, style: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Degrade HQ images into the LQ (DRR-like) domain, same size as the input.

        Args:
            x_hq: (B, 1, H, W) HQ images in [-1, 1].
            style: LQ style codes, e.g. ``encode_style(x_lq)``; None samples N(0, I) codes with ``generator``.
            generator: RNG for the sampled style (ignored when ``style`` is given).
        """
        return self.translate(x_hq, "a", style, generator)

    # -- training losses

    def gen_losses(
        self, x_a: torch.Tensor, x_b: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Generator objective: adversarial + image/style/content reconstruction (+ optional cycle) losses.

        Returns:
            dict with "total" (weighted sum, the value to back-propagate) and every unweighted term.
        """
        self.check_images(x_a, "x_a")
        self.check_images(x_b, "x_b")
        cfg = self.cfg
        s_a = self.sample_style(x_a.shape[0], x_a.device, generator).to(x_a.dtype)
        s_b = self.sample_style(x_b.shape[0], x_b.device, generator).to(x_b.dtype)
        c_a, s_a_own = self.gen_a.encode(x_a)
        c_b, s_b_own = self.gen_b.encode(x_b)
        x_ba = self.gen_a.decode(c_b, s_a)  # LQ content in an HQ style
        x_ab = self.gen_b.decode(c_a, s_b)  # HQ content in an LQ style
        c_b_rec, s_a_rec = self.gen_a.encode(x_ba)
        c_a_rec, s_b_rec = self.gen_b.encode(x_ab)
        out = {
            "gan_a": self.dis_a.loss_g(x_ba),
            "gan_b": self.dis_b.loss_g(x_ab),
            "recon_x_a": F.l1_loss(self.gen_a.decode(c_a, s_a_own), x_a),
            "recon_x_b": F.l1_loss(self.gen_b.decode(c_b, s_b_own), x_b),
            "recon_s_a": F.l1_loss(s_a_rec, s_a),
            "recon_s_b": F.l1_loss(s_b_rec, s_b),
            "recon_c_a": F.l1_loss(c_a_rec, c_a),
            "recon_c_b": F.l1_loss(c_b_rec, c_b),
        }
        total = (
            cfg.gan_w * (out["gan_a"] + out["gan_b"])
            + cfg.recon_x_w * (out["recon_x_a"] + out["recon_x_b"])
            + cfg.recon_s_w * (out["recon_s_a"] + out["recon_s_b"])
            + cfg.recon_c_w * (out["recon_c_a"] + out["recon_c_b"])
        )
        if cfg.recon_x_cyc_w > 0:  # x_a -> b -> a with x_a's own style (and vice versa)
            out["recon_x_cyc_a"] = F.l1_loss(self.gen_a.decode(c_a_rec, s_a_own), x_a)
            out["recon_x_cyc_b"] = F.l1_loss(self.gen_b.decode(c_b_rec, s_b_own), x_b)
            total = total + cfg.recon_x_cyc_w * (out["recon_x_cyc_a"] + out["recon_x_cyc_b"])
        if cfg.lowpass_w > 0:  # coarse intensities of each translation tied to its source (aligned pairs)
            k = cfg.lowpass_factor
            out["lowpass_a"] = F.l1_loss(F.avg_pool2d(x_ab, k, ceil_mode=True), F.avg_pool2d(x_a, k, ceil_mode=True))
            out["lowpass_b"] = F.l1_loss(F.avg_pool2d(x_ba, k, ceil_mode=True), F.avg_pool2d(x_b, k, ceil_mode=True))
            total = total + cfg.lowpass_w * (out["lowpass_a"] + out["lowpass_b"])
        out["total"] = total
        return out

    def dis_loss(
        self, x_a: torch.Tensor, x_b: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Discriminator objective on real images vs. translations made without generator gradients.

        Returns:
            dict with "total" (gan_w * (dis_a + dis_b)), "dis_a" and "dis_b".
        """
        self.check_images(x_a, "x_a")
        self.check_images(x_b, "x_b")
        with torch.no_grad():
            x_ba = self.translate(x_b, "b", generator=generator)
            x_ab = self.translate(x_a, "a", generator=generator)
        dis_a = self.dis_a.loss_d(x_ba.detach(), x_a)
        dis_b = self.dis_b.loss_d(x_ab.detach(), x_b)
        return {"total": self.cfg.gan_w * (dis_a + dis_b), "dis_a": dis_a, "dis_b": dis_b}

    def forward(
        self,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        mode: Literal["gen", "dis"] = "gen",
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``gen_losses`` (mode="gen") or ``dis_loss`` (mode="dis")."""
        if mode == "gen":
            return self.gen_losses(x_a, x_b, generator)
        if mode == "dis":
            return self.dis_loss(x_a, x_b, generator)
        raise ValueError(f"unknown mode {mode!r}; allowed: 'gen', 'dis'")

    # -- persistence

    def save(self, model_dir: str | Path) -> Path:
        """Write ``munit.safetensors`` + ``munit_config.json`` into ``model_dir`` (created); returns the folder."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        (d / CONFIG_NAME).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        return d

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str = "cpu") -> MUNIT:
        """Rebuild a model written by :meth:`save` (in eval mode) on ``device``.

        Raises:
            ValueError: if the folder lacks the weights or the config.
        """
        d = Path(model_dir)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if not (d / name).is_file():
                raise ValueError(f"{d}: not a MUNIT model folder (missing {name})")
        cfg = MUNITConfig.from_dict(json.loads((d / CONFIG_NAME).read_text(encoding="utf-8")))
        model = cls(cfg)
        model.load_state_dict(load_file(str(d / WEIGHTS_NAME), device="cpu"))
        return model.to(device).eval()
