"""GPU path (run with ``python3 -m pytest -m gpu`` on a CUDA machine; deselected by default, skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ct_projection.geometry import ProjectionGeometry, base_pose
from ct_projection.render import DRRRenderer, pick_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_device_is_cuda_and_render_matches_cpu() -> None:
    """``auto`` picks the GPU, and the GPU image equals the CPU image of the same pose (float tolerance)."""
    from ct_projection.ingest import load_example_ct
    from ct_projection.lungs import lung_mask
    from ct_projection.geometry import lung_isocentre

    assert pick_device("auto").type == "cuda"
    vol = load_example_ct()
    iso = lung_isocentre(vol, lung_mask(vol))
    geometry = ProjectionGeometry(size_px=256, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
    pose = base_pose(geometry)
    gpu = DRRRenderer(vol, geometry, isocentre_world=iso, device="cuda").render(pose)
    cpu = DRRRenderer(vol, geometry, isocentre_world=iso, device="cpu").render(pose)
    assert gpu.shape == cpu.shape == (256, 256)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_nanodrr_on_gpu_matches_cpu_with_channels() -> None:
    """nanodrr on CUDA (its Triton kernel when Triton imports, else grid_sample) equals its CPU path, C = 2 too."""
    from ct_projection.attenuation import AttenuationModel
    from ct_projection.geometry import get_pose_params, lung_isocentre
    from ct_projection.ingest import load_example_ct
    from ct_projection.lungs import chest_masks
    from ct_projection.renderer import make_renderer

    vol = load_example_ct()
    masks = chest_masks(vol)
    geometry = ProjectionGeometry(size_px=256)
    pose = get_pose_params(np.random.default_rng(0), geometry)
    model = AttenuationModel()

    def two(hu: np.ndarray) -> np.ndarray:
        return np.stack([model.mu(hu), 2 * model.mu(hu)])

    kwargs = dict(isocentre_world=lung_isocentre(vol, masks.lungs), body=masks.body, densities=two)
    gpu = make_renderer("nanodrr", vol, geometry, device="cuda", **kwargs)
    cpu = make_renderer("nanodrr", vol, geometry, device="cpu", **kwargs)
    a, b = gpu.render_channels(pose), cpu.render_channels(pose)
    assert a.shape == b.shape == (2, 256, 256)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(a[1], 2 * a[0], rtol=1e-4, atol=1e-5)


def test_generate_on_gpu_writes_a_labeled_dataset(tmp_path) -> None:  # noqa: ANN001
    """The main job on the GPU defaults path: images at the requested size with non-empty boxes."""
    from typer.testing import CliRunner

    from data.coco import read_coco
    from pipeline.cli import app

    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["generate", "--out", str(out), "-n", "2", "--size", "512", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "device=cuda" in result.output
    records = read_coco(out / "annotations" / "coco.json")
    assert len(records) == 2 and all(r.width == 512 for r in records)
    assert all(n.bbox_xywh[2] > 0 and n.bbox_xywh[3] > 0 for r in records for n in r.nodules)
