"""One sample, one function: make_sample's determinism and per-consumer seeds, the enhancement step, publish/writers."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from ct_projection.geometry import ProjectionGeometry
from ct_projection.nodules import NoduleConfig
from data.atomic import atomic_write_bytes
from pipeline.config import GenerateConfig
from pipeline.enhancer import EnhanceConfig, Enhancer
from pipeline.generate import load_input
from pipeline.publish import WRITERS, Output, publish
from pipeline.sample import Sample, SampleContext, enhancement_step, make_sample, sample_seeds

SIZE = 48


def config(count: tuple[int, int] = (1, 2), seed: int = 4) -> GenerateConfig:
    """Tiny detector, solid spheres big enough to label at 48 px."""
    return GenerateConfig(
        images_per_ct=3,
        seed=seed,
        geometry=ProjectionGeometry(size_px=SIZE),
        nodules=NoduleConfig(
            count_range=count, diameter_range_mm=(14.0, 20.0), type_probs={"solid": 1.0}, shape_probs={"sphere": 1.0}
        ),
    )


@pytest.fixture(scope="module")
def context(chest_nifti: Path) -> SampleContext:
    vol, masks = load_input(str(chest_nifti))
    return SampleContext.build(vol, config(), vol.checksum[:12], device="cpu", masks=masks)


def with_count(context: SampleContext, count: tuple[int, int]) -> SampleContext:
    """The same CT with another nodule count range (its own prepared sampler)."""
    from ct_projection.nodules import NoduleSampler

    cfg = config(count=count)
    sampler = NoduleSampler(cfg.nodules)
    sampler.prepare(context.vol, context.lungs)
    return dataclasses.replace(context, config=cfg, sampler=sampler)


class FakeEnhancer(Enhancer):
    """2x nearest-neighbour up-scaling plus noise drawn from the given seed; remembers the seeds it was given."""

    def __init__(self) -> None:  # no model to load
        self.config = EnhanceConfig("fake-model")
        self.seeds: list[int] = []

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        self.seeds.append(seed)
        noise = np.random.default_rng(seed).integers(0, 64, size=(pixels.shape[0] * 2, pixels.shape[1] * 2))
        return (np.kron(pixels, np.ones((2, 2))) // 2 + noise).astype(np.uint16)


def test_same_index_same_sample_in_any_order(context: SampleContext) -> None:
    first = make_sample(context, 1)
    make_sample(context, 0)
    again = make_sample(context, 1)
    assert first.pose == again.pose
    # Default physics and display: the clinical presentation plus the physical images behind it.
    assert set(first.images) == {"image", "nodule_free", "physical", "physical_nodule_free"}
    for name, pixels in first.images.items():
        assert pixels.dtype == np.uint16 and pixels.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(pixels, again.images[name])
    assert [lb.bbox_xywh for lb in first.labels] == [lb.bbox_xywh for lb in again.labels]
    assert first.labels, "the spheres should be labelled"
    # Every inserted nodule is either labelled or listed as unlabelled with its reason.
    ids = sorted([lb.nodule_id for lb in first.labels] + [u["nodule_id"] for u in first.unlabelled])
    assert ids == list(range(len(first.nodules)))


def test_pose_does_not_depend_on_the_nodule_draws(context: SampleContext) -> None:
    """Pose and nodules have their own child seeds: drawing more nodules leaves the pose unchanged."""
    more = with_count(context, (3, 3))
    a, b = make_sample(context, 2), make_sample(more, 2)
    assert len(b.nodules) == 3 and len(a.nodules) < 3
    assert a.pose == b.pose
    np.testing.assert_array_equal(a.images["nodule_free"], b.images["nodule_free"])  # same pose, no nodules
    assert not np.array_equal(a.images["image"], b.images["image"])


def test_seed_streams_are_distinct_and_stable() -> None:
    seeds = sample_seeds(7, "ab" * 32, 3)
    states = {name: tuple(s.generate_state(4)) for name, s in seeds.items()}
    assert len(set(states.values())) == len(states) == 4
    assert states == {name: tuple(s.generate_state(4)) for name, s in sample_seeds(7, "ab" * 32, 3).items()}
    assert states["pose"] != tuple(sample_seeds(7, "ab" * 32, 4)["pose"].generate_state(4))


def test_enhancement_step_restores_both_images_with_the_sample_noise(context: SampleContext) -> None:
    fake = FakeEnhancer()
    fewer = dataclasses.replace(context, steps=[*context.steps, enhancement_step(fake, context.config.geometry)])
    more = dataclasses.replace(with_count(context, (3, 3)), steps=fewer.steps)
    plain = make_sample(context, 0)
    sample = make_sample(fewer, 0)
    make_sample(more, 0)
    # Image and twin get the same noise, and it does not depend on how many nodules were drawn.
    assert len(fake.seeds) == 4 and len(set(fake.seeds)) == 1
    assert set(sample.images) == {"image", "nodule_free", "drr", "drr_nodule_free", "physical", "physical_nodule_free"}
    np.testing.assert_array_equal(sample.images["drr"], plain.images["image"])
    np.testing.assert_array_equal(sample.images["drr_nodule_free"], plain.images["nodule_free"])
    assert sample.images["image"].shape == (2 * SIZE, 2 * SIZE)
    for before, after in zip(plain.labels, sample.labels):
        assert after.bbox_xywh == tuple(2 * v for v in before.bbox_xywh)
        assert after.attributes["drr_bbox_xywh"] == list(before.bbox_xywh)
    assert sample.attributes["pixel_spacing_mm"] == pytest.approx(plain.attributes["pixel_spacing_mm"] / 2)
    assert sample.attributes["enhanced"]["model_dir"] == "fake-model"


def test_publish_checksums_files_and_a_new_writer_is_one_entry(context: SampleContext, tmp_path: Path) -> None:
    sample = make_sample(context, 0)

    def mask_writer(s: Sample, _config: GenerateConfig) -> list[Output]:
        pixels = (s.images["image"] != s.images["nodule_free"]).astype(np.uint8).tobytes()
        return [Output(f"masks/{s.stem}.bin", lambda path: atomic_write_bytes(path, pixels), "mask_file")]

    mask_writer.folder = "masks"  # type: ignore[attr-defined]
    record, entry = publish(sample, context.config, tmp_path, [*WRITERS, mask_writer])
    assert record.file_name == f"images/{sample.stem}.png"
    assert record.attributes["mask_file"] == f"masks/{sample.stem}.bin"
    assert record.attributes["nodule_free_file"] == f"images_nodule_free/{sample.stem}.png"
    names = ("nodule_free_file", "physical_file", "physical_nodule_free_file", "detector_file",
             "detector_nodule_free_file", "mask_file")  # fmt: skip
    assert set(entry["files"]) == {record.file_name, *(record.attributes[n] for n in names)}
    assert record.attributes["detector_window"]["lo"] < record.attributes["detector_window"]["hi"]
    for name, digest in entry["files"].items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    assert entry["record"] == record.to_json() and entry["sample_index"] == 0


def test_a_failing_writer_leaves_no_file_of_its_sample(context: SampleContext, tmp_path: Path) -> None:
    sample = make_sample(context, 0)

    def broken(s: Sample, _config: GenerateConfig) -> list[Output]:
        def write(path: Path) -> None:
            raise OSError("disk full")

        return [Output(f"broken/{s.stem}.x", write)]

    broken.folder = "broken"  # type: ignore[attr-defined]
    with pytest.raises(OSError, match="disk full"):
        publish(sample, context.config, tmp_path, [*WRITERS, broken])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
