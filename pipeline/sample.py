"""One sample, one function: ``make_sample(context, index) -> Sample`` renders and labels one image, no file I/O.

A :class:`SampleContext` holds what is shared by all samples of one CT (volume, settings, renderer, nodule sampler,
lung and lobe maps, the sample steps); :func:`make_sample` draws the sample's pose and nodules from their own child
seeds, renders the nodule-free DRR once, adds each nodule's ΔHU projection on its detector window, labels it, and
then runs the context's ``steps`` (``Sample -> Sample``, e.g. :func:`enhanced`). Writing files is
``pipeline.publish``'s job. Serial, Ray and tests all go through :func:`make_sample`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from data.records import NoduleLabel

if TYPE_CHECKING:
    from ct_projection.geometry import Pose, ProjectionGeometry
    from ct_projection.renderer import Renderer
    from ct_projection.lung_field import LungField
    from ct_projection.nodules.insertion import InsertedNodule
    from ct_projection.nodules.placement import NoduleSampler
    from ct_projection.volume import CTVolume
    from pipeline.config import GenerateConfig
    from pipeline.enhancer import Enhancer

# Independent random streams of one sample, in spawn order: each consumer draws from its own child SeedSequence, so
# e.g. the restorer's noise does not depend on how many draws the nodule sampler took. Append new streams at the
# end: a SeedSequence's children depend only on their position, so existing streams keep their values.
SEED_STREAMS = ("pose", "nodules", "restore")


def ct_key(checksum: str) -> int:
    """A CT's stable integer id for seeding (from its content checksum, not its position in the run)."""
    return int(checksum[:15], 16)


def sample_seeds(seed: int, checksum: str, index: int) -> dict[str, np.random.SeedSequence]:
    """The sample's child seeds by stream name: independent of processing order, worker count and each other."""
    root = np.random.SeedSequence(seed, spawn_key=(ct_key(checksum), index))
    return dict(zip(SEED_STREAMS, root.spawn(len(SEED_STREAMS))))


@dataclass
class Sample:
    """One synthetic radiograph before it is written.

    Args:
        ct_id: short content-derived CT id.
        ct_sha256: the CT's content checksum.
        index: sample index within the CT.
        stem: file stem shared by all of this sample's files (run tag, CT id, index).
        pose: the drawn acquisition pose.
        nodules: the inserted nodules (parameters and ΔHU volumes), labelled or not.
        images: named uint16 images: ``image`` (with nodules), ``nodule_free`` (same pose, no nodules) when asked;
            steps may add others (enhancement keeps the raw DRRs as ``drr`` and ``drr_nodule_free``).
        masks: named bool maps on the rendered detector grid: ``lung_field`` (where the lungs project).
        labels: one label per nodule with a box on ``image``.
        attributes: the image record's attributes (pose, geometry, unlabelled nodules and why, ...).
        seeds: the sample's child seeds by stream name (see ``SEED_STREAMS``).
    """

    ct_id: str
    ct_sha256: str
    index: int
    stem: str
    pose: Pose
    nodules: list[InsertedNodule]
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    labels: list[NoduleLabel]
    attributes: dict[str, Any]
    seeds: dict[str, np.random.SeedSequence] = field(repr=False)

    @property
    def unlabelled(self) -> list[dict[str, Any]]:
        """Inserted nodules with no box on this image, with the reason."""
        return self.attributes["unlabelled_nodules"]


SampleStep = Callable[[Sample], Sample]


@dataclass
class SampleContext:
    """Everything the samples of one CT share; built once per CT by :meth:`build`."""

    vol: CTVolume
    config: GenerateConfig
    ct_id: str
    renderer: Renderer
    sampler: Any  # NoduleSampler, or a LibrarySampler wrapping one (generate --nodule-library)
    lungs: np.ndarray
    lobes: np.ndarray | None
    lung_field: LungField
    steps: Sequence[SampleStep] = ()

    @classmethod
    def build(
        cls,
        vol: CTVolume,
        config: GenerateConfig,
        ct_id: str,
        device: str | None = None,
        steps: Sequence[SampleStep] = (),
    ) -> SampleContext:
        """Per-CT set-up: body mask, lung and lobe maps, the renderer centred on the lungs, the prepared sampler."""
        from ct_projection.body import body_mask
        from ct_projection.geometry import lung_isocentre
        from ct_projection.lung_field import LungField
        from ct_projection.lungs import lobe_map, lung_mask
        from ct_projection.nodules.placement import NoduleSampler
        from ct_projection.renderer import make_renderer

        body = body_mask(vol.hu, vol.spacing)  # one per CT: the lung segmentation and the renderer's crop share it
        lungs = lung_mask(vol, body=body)
        lobes = lobe_map(vol)
        renderer = make_renderer(
            config.renderer, vol, config.geometry, attenuation=config.attenuation,
            isocentre_world=lung_isocentre(vol, lungs), device=device, body=body,
        )  # fmt: skip
        sampler: Any = NoduleSampler(config.nodules)
        sampler.prepare(vol, lungs)
        if config.nodule_library is not None:
            from ct_projection.nodule_library import LibraryConfig, LibrarySampler, NoduleLibrary

            library = NoduleLibrary(config.nodule_library, LibraryConfig(fraction=config.library_fraction))
            sampler = LibrarySampler(sampler, library)
        return cls(vol, config, ct_id, renderer, sampler, lungs, lobes, LungField(vol, lungs), tuple(steps))


def _nodule_facts(nodule: InsertedNodule) -> dict[str, Any]:
    """What a label records about the inserted nodule itself."""
    return {
        **nodule.params.to_dict(),
        "mean_hu": round(float(nodule.mean_hu), 2),
        "mean_hu_partial_volume": round(float(nodule.mean_hu_partial_volume), 2),
        "core_mean_hu": None if np.isnan(nodule.core_mean_hu) else round(float(nodule.core_mean_hu), 2),
        "local_lung_mean_hu": round(float(nodule.local_lung_mean_hu), 2),
        "volume_mm3": round(float(nodule.volume_mm3), 3),
        "diameter_measured_mm": round(float(nodule.diameter_measured_mm), 3),
    }


def make_sample(context: SampleContext, index: int) -> Sample:
    """Render and label sample ``index`` of the context's CT, then apply the context's steps; writes nothing."""
    from ct_projection.geometry import get_pose_params
    from ct_projection.labels import project_nodule
    from ct_projection.nodule_library import LibraryInsertion, insert_mixed
    from ct_projection.nodules.shape import nodule_surface_points

    vol, config, renderer = context.vol, context.config, context.renderer
    seeds = sample_seeds(config.seed, vol.checksum, index)
    pose = get_pose_params(np.random.default_rng(seeds["pose"]), config.geometry)
    params = context.sampler.get_params(np.random.default_rng(seeds["nodules"]), vol, context.lungs, context.lobes)
    library = getattr(context.sampler, "library", None)
    inserted = insert_mixed(vol, params, library, supersample=config.nodules.supersample)
    background = renderer.render(pose)
    image = background.copy()
    labels: list[NoduleLabel] = []
    unlabelled: list[dict[str, Any]] = []  # inserted nodules with no box on this image, and why
    for nodule_id, nodule in enumerate(inserted):
        if isinstance(nodule, LibraryInsertion):  # a real nodule: its mask's surface, its contrast over its lung
            facts, surface, contrast = nodule.facts(), nodule.surface_world_mm, abs(nodule.contrast_hu)
        else:
            facts, surface = _nodule_facts(nodule), nodule_surface_points(nodule.params)
            contrast = abs(nodule.params.hu_target - nodule.local_lung_mean_hu)
        proj = project_nodule(
            renderer,
            pose,
            nodule.delta_hu,
            nodule.offset,
            nodule.box_world_mm,
            np.asarray(nodule.params.centre_world_mm),
            surface,
            background,
            config.labels,
            contrast_hu=contrast,
        )
        if proj is None:
            unlabelled.append({"nodule_id": nodule_id, "reason": "off the detector", **facts})
            continue
        w = proj.window
        image[w.r0 : w.r1, w.c0 : w.c1] += proj.delta_l  # a sub-threshold nodule still attenuates
        if not proj.footprint.any():
            # A zero-size box is not a label any detector format can use: keep the nodule as a fact instead.
            reason = f"empty footprint (no ray crosses {config.labels.min_chord_mm:g} mm of nodule material)"
            unlabelled.append({"nodule_id": nodule_id, "reason": reason, **facts, **proj.attributes()})
            continue
        labels.append(NoduleLabel(nodule_id, proj.bbox_xywh, proj.footprint, attributes={**facts, **proj.attributes()}))
    images = {"image": config.attenuation.to_uint16(image)}
    if config.write_nodule_free:
        images["nodule_free"] = config.attenuation.to_uint16(background)
    size = config.geometry.size_px
    attributes: dict[str, Any] = {
        "ct": context.ct_id,
        "ct_sha256": vol.checksum,
        "sample_index": index,
        "seed": config.seed,
        "view": config.geometry.view,
        "pose": pose.to_dict(),
        "pixel_spacing_mm": config.geometry.pixel_mm * size / images["image"].shape[1],
        "sdd_mm": config.geometry.sdd_mm,
        "isocentre_world_mm": [round(float(v), 3) for v in renderer.isocentre_world],
        "unlabelled_nodules": unlabelled,
    }
    alias = config.alias_for(vol.checksum)
    if alias is not None:
        attributes["alias"] = alias
    stem = f"{config.tag()}_{context.ct_id}_{index:04d}"
    masks = {"lung_field": context.lung_field.mask(renderer, pose)}
    sample = Sample(context.ct_id, vol.checksum, index, stem, pose, inserted, images, masks, labels, attributes, seeds)
    for step in context.steps:
        sample = step(sample)
    return sample


def enhancement_step(enhancer: Enhancer, geometry: ProjectionGeometry) -> SampleStep:
    """The ``Sample -> Sample`` step of ``generate --enhance`` (``geometry``: the DRRs' detector)."""

    def step(sample: Sample) -> Sample:
        return enhanced(sample, enhancer, geometry)

    return step


def enhanced(sample: Sample, enhancer: Enhancer, geometry: ProjectionGeometry) -> Sample:
    """The sample restored by DDPM-HQ: image and nodule-free twin with the same noise, labels scaled with them.

    The raw DRRs stay in ``images`` as ``drr`` (and ``drr_nodule_free``); the noise seed comes from the sample's own
    ``restore`` stream, so it does not depend on the other streams' draws.
    """
    seed = int(np.random.default_rng(sample.seeds["restore"]).integers(2**31))
    drr = sample.images["image"]
    restored = enhancer(drr, seed=seed)
    drr_size = (int(drr.shape[0]), int(drr.shape[1]))
    labels = [enhancer.scale_label(label, in_size=drr_size, out_size=restored.shape) for label in sample.labels]
    images = {"drr": drr, "image": restored}
    if "nodule_free" in sample.images:
        # The twin goes through the same restorer with the same noise, so the pair still differs only where the
        # nodules are (up to what the restorer makes of them); its raw DRR is kept too.
        images["drr_nodule_free"] = sample.images["nodule_free"]
        images["nodule_free"] = enhancer(sample.images["nodule_free"], seed=seed)
    attributes = {
        **sample.attributes,
        "pixel_spacing_mm": geometry.pixel_mm * geometry.size_px / restored.shape[1],
        "enhanced": enhancer.config.to_dict(),
    }
    return replace(sample, images=images, labels=labels, attributes=attributes)
