"""The DRRs as they were before issue 10 (for the realism table's baseline row): no framing, no physics.

Usage:
    python benchmarks/unframed_drrs.py -n 12 --out out/realism_bench/unframed

Embedded example CT, 512 px PA, monoenergetic line integral, the isocentre at the lungs' box centre, no
collimation (the CT's box edges show), the same seeded pose jitter as ``generate``; 16-bit PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Render and write the images."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=12)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from ct_projection.attenuation import AttenuationModel
    from ct_projection.geometry import ProjectionGeometry, get_pose_params, lung_isocentre
    from ct_projection.ingest import load_example_ct
    from ct_projection.lungs import lung_mask
    from ct_projection.render import DRRRenderer
    from data.images import write_png16

    vol = load_example_ct()
    geometry = ProjectionGeometry(size_px=512)
    attenuation = AttenuationModel()
    renderer = DRRRenderer(vol, geometry, attenuation, isocentre_world=lung_isocentre(vol, lung_mask(vol)), device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    for index in range(args.n):
        pose = get_pose_params(np.random.default_rng(np.random.SeedSequence(0, spawn_key=(index,))), geometry)
        write_png16(args.out / f"unframed_{index:04d}.png", attenuation.to_uint16(renderer.render(pose)))
    print(f"wrote {args.n} unframed DRRs to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
