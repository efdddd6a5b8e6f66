"""Ray backend: a local cluster on 2 CPUs gives the same dataset, byte for byte, as the serial run."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import write_chest_phantom

from ct_projection.geometry import ProjectionGeometry
from pipeline.config import GenerateConfig
from pipeline.generate import generate

pytestmark = pytest.mark.slow  # starts a Ray cluster

ray = pytest.importorskip("ray")

HANG_LIMIT_S = 420  # a pool waiting on actors that cannot be placed would block forever; fail instead


def digest(root: Path) -> dict[str, str]:
    """sha256 of every dataset file except the append-only manifest (its line order follows completion order)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # num_cpus=2: the test below asks for more actors than that, which must be capped, not hang.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError(f"generate_ray did not finish in {HANG_LIMIT_S} s (actor pool hang?)")


def test_pool_size_never_exceeds_what_the_cluster_can_place() -> None:
    from pipeline.ray_backend import pool_size

    assert pool_size(5, gpus=0, cpus=2, n_inputs=10) == 2
    assert pool_size(None, gpus=0, cpus=2, n_inputs=10) == 2
    assert pool_size(None, gpus=0, cpus=8, n_inputs=3) == 3
    assert pool_size(8, gpus=2, cpus=16, n_inputs=10) == 2  # one GPU per actor
    assert pool_size(None, gpus=4, cpus=2, n_inputs=10) == 2
    assert pool_size(0, gpus=0, cpus=1, n_inputs=0) == 1


def test_ray_equals_serial(local_ray: None, tmp_path: Path) -> None:
    """Bad CT skipped, a copy of a CT counted once, 5 actors asked of 2 CPUs: same bytes as serial, no hang."""
    from pipeline.ray_backend import generate_ray

    cts = [str(write_chest_phantom(tmp_path / f"ct{i}.nii.gz", seed=i)) for i in range(3)]
    copy = tmp_path / "copy_of_ct0.nii.gz"
    shutil.copy(cts[0], copy)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a CT")
    inputs = [cts[0], str(bad), cts[1], str(copy), cts[2]]
    config = GenerateConfig(images_per_ct=2, seed=11, geometry=ProjectionGeometry(size_px=64))
    serial = generate(inputs, tmp_path / "serial", config, device="cpu", progress=False)
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(HANG_LIMIT_S)
    try:
        distributed = generate_ray(inputs, tmp_path / "ray", config, device="cpu", progress=False, num_workers=5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(serial.records) == len(distributed.records) == 6
    assert len(distributed.failed) == 1 and str(bad) in distributed.failed[0]
    assert distributed.duplicates == serial.duplicates == [f"{copy}: same CT as {cts[0]}; skipped"]
    assert digest(tmp_path / "ray") == digest(tmp_path / "serial")
    for run in ("serial", "ray"):  # one manifest entry per (CT, sample), even for the copy rendered on another actor
        lines = (tmp_path / run / "manifest.jsonl").read_text().splitlines()
        keys = [(json.loads(x)["ct_sha256"], json.loads(x)["sample_index"]) for x in lines]
        assert len(keys) == 6 and len(set(keys)) == 6, run


def test_ray_with_nodule_library_equals_serial(local_ray: None, tmp_path: Path) -> None:
    """generate --nodule-library: the Ray backend gives the serial run's bytes (library nodules drawn per sample)."""
    from ct_projection.nodules import NoduleConfig
    from pipeline.ray_backend import generate_ray
    from test_nodule_library import write_patch_pair

    library = write_patch_pair(tmp_path / "lib", k=0)
    cts = [str(write_chest_phantom(tmp_path / f"ct{i}.nii.gz", seed=i)) for i in range(2)]
    config = GenerateConfig(
        images_per_ct=2, seed=3, geometry=ProjectionGeometry(size_px=64), nodule_library=str(library),
        library_fraction=0.5, nodules=NoduleConfig(count_range=(2, 2), diameter_range_mm=(10.0, 16.0)),
    )  # fmt: skip
    serial = generate(cts, tmp_path / "serial", config, device="cpu", progress=False)
    distributed = generate_ray(cts, tmp_path / "ray", config, device="cpu", progress=False, num_workers=2)
    assert len(serial.records) == len(distributed.records) == 4
    assert any(n.attributes.get("source") == "library" for r in serial.records for n in r.nodules)
    assert digest(tmp_path / "ray") == digest(tmp_path / "serial")


def test_nanodrr_on_ray_with_dicom_equals_serial_and_resumes(local_ray: None, tmp_path: Path) -> None:
    """generate --renderer nanodrr --dicom: Ray gives the serial bytes; a lost image is redone byte-identical."""
    from pipeline.ray_backend import generate_ray

    cts = [str(write_chest_phantom(tmp_path / f"ct{i}.nii.gz", seed=i)) for i in range(2)]
    config = GenerateConfig(
        images_per_ct=2, seed=5, geometry=ProjectionGeometry(size_px=64), renderer="nanodrr", dicom=True
    )
    serial = generate(cts, tmp_path / "serial", config, device="cpu", progress=False)
    distributed = generate_ray(cts, tmp_path / "ray", config, device="cpu", progress=False, num_workers=2)
    assert len(serial.records) == len(distributed.records) == 4
    assert all(n.bbox_xywh[2] > 0 for r in serial.records for n in r.nodules)
    before = digest(tmp_path / "serial")
    assert any(name.startswith("dicom/") for name in before)
    assert digest(tmp_path / "ray") == before
    lost = tmp_path / "serial" / serial.records[1].file_name
    lost.unlink()  # resume: the sample whose image is gone is redone, the others are verified and kept
    resumed = generate(cts, tmp_path / "serial", config, device="cpu", progress=False)
    assert resumed.skipped_done == 3
    assert digest(tmp_path / "serial") == before


def test_enhanced_run_on_ray_equals_serial(local_ray: None, tmp_path: Path) -> None:
    """generate with the restorer: each actor loads the model the driver resolved once; same bytes as serial."""
    from pipeline.enhancer import PACKAGED_MODEL, EnhanceConfig, Enhancer
    from pipeline.ray_backend import generate_ray
    from restorer import save_tiny_restorer

    model = save_tiny_restorer(tmp_path / "model", lq_size=32)
    cts = [str(write_chest_phantom(tmp_path / f"ct{i}.nii.gz", seed=i)) for i in range(2)]
    enhancer = Enhancer(EnhanceConfig(PACKAGED_MODEL, steps=2), model_path=model)  # as the CLI resolves it
    config = GenerateConfig(images_per_ct=2, seed=2, geometry=ProjectionGeometry(size_px=32), enhance=enhancer.config)
    # Ray workers run torch on 1 thread; CPU convolutions sum in a thread-count-dependent order, so restored bytes
    # are compared at the same thread count (docs/SCALING.md)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = generate(cts, tmp_path / "serial", config, device="cpu", progress=False, enhancer=enhancer)
    finally:
        torch.set_num_threads(threads)
    distributed = generate_ray(
        cts, tmp_path / "ray", config, device="cpu", progress=False, num_workers=2, enhance_dir=model
    )
    assert len(serial.records) == len(distributed.records) == 4
    assert all((r.width, r.height) == (64, 64) for r in distributed.records)
    before = digest(tmp_path / "serial")
    assert sum(name.startswith("images_drr/") for name in before) == 4
    assert digest(tmp_path / "ray") == before
