"""The acquisition chain: material line integrals → primary → scatter → quantum noise → detector blur → read-out → −ln.

``--physics simple`` is the monoenergetic, noise-free line integral at 60 keV (``ct_projection.attenuation``), what
geometry tests use; ``full`` is this chain. Every setting is a field of :class:`PhysicsConfig` (recorded in the
dataset's config.json); the only randomness is :class:`NoiseFields`, drawn from a per-sample child SeedSequence and
shared by an image and its nodule-free twin, so the pair differs only by the nodules' signal.

Signal units are keV deposited per pixel; ``L = −ln(signal / open_field)`` where ``open_field`` is the noise-free,
scatter-free signal without a patient (after the grid), so an unattenuated pixel reads L ≈ 0 and bright means
attenuating, as in the ``simple`` mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ct_projection.physics.detector import DetectorConfig, blur, quantum_noise
from ct_projection.physics.materials import MaterialBasis
from ct_projection.physics.polychromatic import PolychromaticModel, water_equivalent_cm
from ct_projection.physics.scatter import ScatterConfig, scatter_signal
from ct_projection.physics.spectrum import SpectrumConfig

PHYSICS_MODES = ("simple", "full")


@dataclass(frozen=True)
class PhysicsConfig:
    """How a radiograph is acquired.

    Args:
        mode: ``full`` (spectrum, materials, scatter, noise, blur) or ``simple`` (monoenergetic, noise-free).
        spectrum: tube settings and dose (mAs).
        materials: HU → water/bone basis.
        scatter: scatter model and grid.
        detector: scintillator, noise and blur.
    """

    mode: str = "full"
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    materials: MaterialBasis = field(default_factory=MaterialBasis)
    scatter: ScatterConfig = field(default_factory=ScatterConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self) -> None:
        if self.mode not in PHYSICS_MODES:
            raise ValueError(f"unknown physics mode {self.mode!r}: expected one of {', '.join(PHYSICS_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (every field, so a dataset's config.json reads back; ``simple`` uses only ``mode``)."""
        return asdict(self)


@dataclass(frozen=True)
class NoiseFields:
    """Standard-normal fields for the quantum and electronic noise of one sample (shared by the image and its twin)."""

    quantum: np.ndarray
    electronic: np.ndarray

    @classmethod
    def draw(cls, shape: tuple[int, int], seed: np.random.SeedSequence) -> NoiseFields:
        """Draw both fields from ``seed`` (a child SeedSequence of the sample's)."""
        rng = np.random.default_rng(seed)
        return cls(
            rng.standard_normal(shape, dtype=np.float32),
            rng.standard_normal(shape, dtype=np.float32),
        )


class Acquisition:
    """The ``full`` acquisition chain for one detector geometry.

    Args:
        config: physics settings.
        pixel_mm: detector pixel pitch (mm).
        sdd_mm: source–detector distance (mm): the inverse-square law sets the quanta per pixel.
    """

    def __init__(self, config: PhysicsConfig, pixel_mm: float, sdd_mm: float) -> None:
        self.config = config
        self.pixel_mm = float(pixel_mm)
        self.model = PolychromaticModel.build(config.spectrum, config.detector)
        # Detected quanta per pixel per bin without a patient (before the grid).
        scale = config.spectrum.mas * (1000.0 / sdd_mm) ** 2 * self.pixel_mm**2
        self.quanta = (self.model.quanta_per_mm2 * scale).astype(np.float32)
        self.open_mean_kev = float((self.quanta * self.model.energy_kev).sum() / self.quanta.sum())
        self.open_swank_kev = float((self.quanta * self.model.energy2_kev2).sum() / (self.quanta * self.model.energy_kev).sum())
        self.open_signal = float((self.quanta * self.model.energy_kev).sum() * config.scatter.primary_factor)

    @property
    def open_field_quanta(self) -> float:
        """Detected quanta per pixel without a patient (after the grid): the dose at the detector."""
        return float(self.quanta.sum() * self.config.scatter.primary_factor)

    def expected_signal(self, paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free detected signal (keV/pixel, primary + scatter after the grid) and its quantum variance (keV²)."""
        t = self.model.transmission(paths)  # (B, H, W)
        e1 = (self.quanta * self.model.energy_kev).astype(np.float32)
        e2 = (self.quanta * self.model.energy2_kev2).astype(np.float32)
        primary = np.tensordot(e1, t, axes=(0, 0))
        variance = np.tensordot(e2, t, axes=(0, 0))
        sc = self.config.scatter
        signal = primary * np.float32(sc.primary_factor)
        variance = variance * np.float32(sc.primary_factor)  # grid removal thins a Poisson process: still Poisson
        if sc.enabled:
            scatter = scatter_signal(primary, water_equivalent_cm(paths), sc, self.pixel_mm) * np.float32(sc.scatter_factor)
            signal = signal + scatter
            variance = variance + scatter * np.float32(self.open_swank_kev)
        return signal.astype(np.float32), variance.astype(np.float32)

    def detect(self, paths: np.ndarray, noise: NoiseFields | None) -> np.ndarray:
        """The acquired image L = −ln(signal/open field), float32, for material line integrals (M, H, W) in g/cm².

        ``noise`` None gives the noise-free expected image (blurred, with scatter).
        """
        det = self.config.detector
        signal, variance = self.expected_signal(paths)
        if noise is not None and det.quantum_noise:
            signal = quantum_noise(signal, variance, noise.quantum)
        signal = blur(signal, det.blur_sigma_px(self.pixel_mm))
        if noise is not None and det.electronic_noise_quanta > 0:
            signal = signal + np.float32(det.electronic_noise_quanta * self.open_mean_kev) * noise.electronic
        floor = 0.5 * self.open_mean_kev  # half a quantum: the log of an empty pixel stays finite
        return (-np.log(np.maximum(signal, floor) / self.open_signal)).astype(np.float32)
