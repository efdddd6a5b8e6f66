"""Run configuration for ``generate``: one dataclass per component, saved beside the dataset it produced."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ct_projection.attenuation import AttenuationModel
from ct_projection.geometry import ProjectionGeometry
from ct_projection.labels import LabelConfig
from ct_projection.nodules import NoduleConfig
from pipeline.enhancer import EnhanceConfig

CPU_DEFAULT_SIZE_PX = 512
CPU_DEFAULT_IMAGES_PER_CT = 6
GPU_DEFAULT_SIZE_PX = 1024
GPU_DEFAULT_IMAGES_PER_CT = 16


@dataclass
class GenerateConfig:
    """Everything that determines the generated dataset (together with the input CTs).

    Args:
        images_per_ct: radiographs rendered per CT (each with fresh nodules and pose jitter).
        seed: base seed; sample k of CT c draws from ``SeedSequence(seed, spawn_key=(ct_key(c), k))``.
        geometry: acquisition geometry.
        nodules: nodule sampling settings.
        labels: footprint/visibility settings.
        attenuation: HU → μ and pixel mapping.
        write_nodule_free: also write the nodule-free DRR of the same pose.
        enhance: restore each DRR with a trained DDPM-HQ (2x) before writing; None keeps raw DRRs.
    """

    images_per_ct: int = CPU_DEFAULT_IMAGES_PER_CT
    seed: int = 0
    geometry: ProjectionGeometry = field(default_factory=lambda: ProjectionGeometry(size_px=CPU_DEFAULT_SIZE_PX))
    nodules: NoduleConfig = field(default_factory=NoduleConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    attenuation: AttenuationModel = field(default_factory=AttenuationModel)
    write_nodule_free: bool = True
    enhance: EnhanceConfig | None = None

    def __post_init__(self) -> None:
        if self.images_per_ct < 1:
            raise ValueError(f"images_per_ct must be >= 1, got {self.images_per_ct}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["nodules"] = self.nodules.to_dict()
        return out

    def fingerprint(self) -> str:
        """Short hash of the settings (a resumed run must match it)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
