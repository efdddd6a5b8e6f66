"""Ray backend: a local cluster on 2 CPUs gives the same dataset, byte for byte, as the serial run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ct_projection.geometry import ProjectionGeometry
from pipeline.config import GenerateConfig
from pipeline.generate import generate

ray = pytest.importorskip("ray")


def digest(root: Path) -> dict[str, str]:
    """sha256 of every dataset file except the append-only manifest (its line order follows completion order)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }


@pytest.fixture(scope="module")
def local_ray():
    # num_cpus=2 and at most 2 actors: more actors than CPUs is Ray's known hang.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_equals_serial(local_ray, tmp_path: Path) -> None:
    from pipeline.ray_backend import generate_ray
    from tests.conftest import write_chest_phantom

    cts = [str(write_chest_phantom(tmp_path / f"ct{i}.nii.gz", seed=i)) for i in range(3)]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a CT")
    inputs = [cts[0], str(bad), cts[1], cts[2]]
    config = GenerateConfig(images_per_ct=2, seed=11, geometry=ProjectionGeometry(size_px=64))
    serial = generate(inputs, tmp_path / "serial", config, device="cpu", progress=False)
    distributed = generate_ray(inputs, tmp_path / "ray", config, device="cpu", progress=False, num_workers=2)
    assert len(serial.records) == len(distributed.records) == 6
    assert len(distributed.failed) == 1 and str(bad) in distributed.failed[0]
    assert digest(tmp_path / "ray") == digest(tmp_path / "serial")
