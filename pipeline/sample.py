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
    from ct_projection.lungs import ChestMasks
    from ct_projection.nodules.insertion import InsertedNodule
    from ct_projection.nodules.placement import NoduleSampler
    from ct_projection.volume import CTVolume
    from pipeline.config import GenerateConfig
    from pipeline.enhancer import Enhancer

# Independent random streams of one sample, in spawn order: each consumer draws from its own child SeedSequence, so
# e.g. the restorer's noise does not depend on how many draws the nodule sampler took. Append new streams at the
# end: a SeedSequence's children depend only on their position, so existing streams keep their values.
SEED_STREAMS = ("pose", "nodules", "restore", "noise")


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
        masks: named bool maps on the rendered detector grid: ``lung_field`` (where the lungs project) and
            ``exposed`` (the collimated field, see ``ct_projection.framing``).
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
    acquisition: Any = None  # ct_projection.physics.acquisition.Acquisition for --physics full, else None
    covered_box: np.ndarray | None = None  # framing.covered_box_world: grid and body boxes (collimated field)
    coverage: tuple[str, ...] = ()  # what of the lungs the CT does not cover (reported, recorded per image)

    @classmethod
    def build(
        cls,
        vol: CTVolume,
        config: GenerateConfig,
        ct_id: str,
        device: str | None = None,
        steps: Sequence[SampleStep] = (),
        masks: ChestMasks | None = None,
    ) -> SampleContext:
        """Per-CT set-up: body and lung masks (``masks`` when already computed), lobe map, the renderer framed on
        the lungs and cropped to the body, the prepared nodule sampler.

        Raises:
            CTInputError: the CT does not hold both lungs.
        """
        from ct_projection.framing import check_both_lungs, coverage_notes, covered_box_world, framed_isocentre
        from ct_projection.lung_field import LungField
        from ct_projection.lungs import chest_masks, lobe_map
        from ct_projection.nodules.placement import NoduleSampler
        from ct_projection.renderer import make_renderer

        masks = masks or chest_masks(vol)  # one body mask per CT: lung segmentation and renderer crop share it
        body, lungs = masks.body, masks.lungs
        lobes = lobe_map(vol)
        check_both_lungs(vol, lungs)
        coverage = tuple(coverage_notes(vol, lungs))
        if coverage:
            vol.info["coverage"] = "; ".join(coverage)  # reported once per CT by the run (pipeline.generate)
        acquisition = densities = None
        if config.physics.mode == "full":
            from ct_projection.physics.acquisition import Acquisition
            from ct_projection.physics.paths import material_densities

            # One renderer, two channels (water and bone partial densities) traced in one pass over the rays.
            densities = material_densities(config.physics.materials)
            acquisition = Acquisition(config.physics, config.geometry.pixel_mm, config.geometry.sdd_mm)
        renderer = make_renderer(
            config.renderer, vol, config.geometry, attenuation=config.attenuation,
            isocentre_world=framed_isocentre(vol, lungs, config.geometry), device=device, body=body,
            densities=densities,
        )  # fmt: skip
        sampler: Any = NoduleSampler(config.nodules)
        sampler.prepare(vol, lungs)
        if config.nodule_library is not None:
            from ct_projection.nodule_library import LibraryConfig, LibrarySampler, NoduleLibrary

            library = NoduleLibrary(config.nodule_library, LibraryConfig(fraction=config.library_fraction))
            sampler = LibrarySampler(sampler, library)
        steps = (presentation_step(config), *steps)  # the clinical display comes before any restoration
        return cls(
            vol, config, ct_id, renderer, sampler, lungs, lobes, LungField(vol, lungs), tuple(steps), acquisition,
            covered_box_world(vol, body), coverage,
        )  # fmt: skip


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


def _inside_field(labels: list[NoduleLabel], exposed: np.ndarray, unlabelled: list[dict[str, Any]]) -> list[NoduleLabel]:
    """Labels with footprints clipped to the exposed field (boxes recomputed); wholly collimated ones move to
    ``unlabelled`` with the reason."""
    from data.records import bbox_from_mask

    kept = []
    for label in labels:
        footprint = label.footprint & exposed
        if np.array_equal(footprint, label.footprint):
            kept.append(label)
        elif footprint.any():
            kept.append(replace(label, bbox_xywh=bbox_from_mask(footprint), footprint=footprint))
        else:
            unlabelled.append({"nodule_id": label.nodule_id, "reason": "outside the collimated field", **label.attributes})
    return kept


def make_sample(context: SampleContext, index: int) -> Sample:
    """Render and label sample ``index`` of the context's CT, then apply the context's steps; writes nothing."""
    from ct_projection.framing import collimate, collimation_field
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
    physical = _PhysicalImage(context, pose, seeds["noise"]) if context.acquisition is not None else None
    background = renderer.render(pose) if physical is None else physical.nodule_free()
    image = background.copy()
    labels: list[NoduleLabel] = []
    unlabelled: list[dict[str, Any]] = []  # inserted nodules with no box on this image, and why
    for nodule_id, nodule in enumerate(inserted):
        if isinstance(nodule, LibraryInsertion):  # a real nodule: its mask's surface, its contrast over its lung
            facts, surface, contrast = nodule.facts(), nodule.surface_world_mm, abs(nodule.contrast_hu)
        else:
            facts, surface = _nodule_facts(nodule), nodule_surface_points(nodule.params)
            contrast = abs(nodule.params.hu_target - nodule.local_lung_mean_hu)
        # Full physics: the nodule's material paths join the image's; its label is cut from their 60 keV line
        # integral, the same geometric quantity as in simple mode (so labels do not depend on the physics).
        rendered = None if physical is None else physical.add_nodule(nodule)
        proj = None
        if physical is None or rendered is not None:
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
                rendered=rendered,
            )
        if proj is None:
            unlabelled.append({"nodule_id": nodule_id, "reason": "off the detector", **facts})
            continue
        w = proj.window
        if physical is None:
            image[w.r0 : w.r1, w.c0 : w.c1] += proj.delta_l  # a sub-threshold nodule still attenuates
        if not proj.footprint.any():
            # A zero-size box is not a label any detector format can use: keep the nodule as a fact instead.
            reason = f"empty footprint (no ray crosses {config.labels.min_chord_mm:g} mm of nodule material)"
            unlabelled.append({"nodule_id": nodule_id, "reason": reason, **facts, **proj.attributes()})
            continue
        labels.append(NoduleLabel(nodule_id, proj.bbox_xywh, proj.footprint, attributes={**facts, **proj.attributes()}))
    if physical is not None:
        image = physical.with_nodules()
    exposure = None
    if context.covered_box is not None:  # collimate to what the CT covers: no CT box edges in the image
        exposure = collimation_field(renderer, pose, context.covered_box)
        weight = exposure.weight(config.geometry.size_px)
        image = collimate(image, weight, config.attenuation.l_max)
        background = collimate(background, weight, config.attenuation.l_max)
        labels = _inside_field(labels, weight >= 0.5, unlabelled)
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
        "physics": config.physics.mode,
    }
    if exposure is not None:
        attributes["collimation"] = exposure.to_dict()
    if context.coverage:
        attributes["ct_coverage"] = list(context.coverage)
    alias = config.alias_for(vol.checksum)
    if alias is not None:
        attributes["alias"] = alias
    stem = f"{config.tag()}_{context.ct_id}_{index:04d}"
    masks = {"lung_field": context.lung_field.mask(renderer, pose)}
    if exposure is not None:
        masks["exposed"] = weight >= 0.5  # the collimated field (display windows are fitted inside it)
        masks["lung_field"] &= masks["exposed"]
    sample = Sample(context.ct_id, vol.checksum, index, stem, pose, inserted, images, masks, labels, attributes, seeds)
    for step in context.steps:
        sample = step(sample)
    return sample


class _PhysicalImage:
    """The ``full`` acquisition of one sample: material paths of the CT, plus each nodule's, through one noise draw.

    The noise fields come from the sample's ``noise`` seed stream and are shared by the image and its twin, so the
    pair differs only by the nodules' signal (see ``ct_projection.physics.detector``).
    """

    def __init__(self, context: SampleContext, pose: Pose, seed: np.random.SeedSequence) -> None:
        from ct_projection.physics.acquisition import NoiseFields

        self.context = context
        self.pose = pose
        self.paths = context.renderer.render_channels(pose)  # (2, H, W) water/bone paths, g/cm²
        self.total = self.paths.copy()
        self.noise = NoiseFields.draw(self.paths.shape[1:], seed)

    def nodule_free(self) -> np.ndarray:
        """The twin's acquired image L."""
        return self.context.acquisition.detect(self.paths, self.noise)

    def add_nodule(self, nodule: InsertedNodule) -> tuple[Any, np.ndarray] | None:
        """Trace the nodule's material change on its window, add it; (window, 60 keV ΔL) or None if off the detector."""
        from ct_projection.physics.paths import nodule_density_change
        from ct_projection.physics.polychromatic import reference_line_integral

        renderer, vol = self.context.renderer, self.context.vol
        window = renderer.window_for(self.pose, nodule.box_world_mm)
        if window is None:
            return None
        change = nodule_density_change(self.context.config.physics.materials, vol.hu, nodule.delta_hu, nodule.offset)
        delta_paths = renderer.render_window(self.pose, change, nodule.offset, window)
        self.total[:, window.r0 : window.r1, window.c0 : window.c1] += delta_paths
        return window, reference_line_integral(delta_paths)

    def with_nodules(self) -> np.ndarray:
        """The acquired image L with every nodule."""
        return self.context.acquisition.detect(self.total, self.noise)


def presentation_step(config: GenerateConfig) -> SampleStep:
    """The clinical display stage (``--display clinical``): ``image``/``nodule_free`` become presentation images.

    The physical (line-integral) images move to ``physical``/``physical_nodule_free``; one display window, fitted on
    the nodule-free twin, is used for both, so the pair still differs only around the nodules. ``raw``: no change.
    """

    def step(sample: Sample) -> Sample:
        return presented(sample, config)

    return step


def presented(sample: Sample, config: GenerateConfig) -> Sample:
    """The sample with its images in clinical presentation (see :func:`presentation_step`)."""
    from ct_projection.display import fit_window, present, to_uint16

    display = config.display
    if display.mode == "raw":
        return sample
    pixel_mm = config.geometry.pixel_mm
    physical = {name: config.attenuation.from_uint16(sample.images[name]) for name in ("image", "nodule_free") if name in sample.images}
    exposed = sample.masks.get("exposed")
    window = fit_window(physical.get("nodule_free", physical["image"]), display, exposed)
    images = dict(sample.images)
    for name, line_integral in physical.items():
        images["physical" if name == "image" else "physical_nodule_free"] = sample.images[name]
        images[name] = to_uint16(present(line_integral, display, window, pixel_mm, exposed))
    attributes = {**sample.attributes, "display": display.mode, "display_window": window.to_dict()}
    return replace(sample, images=images, attributes=attributes)


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
    images = {**sample.images, "drr": drr, "image": restored}  # other images (e.g. the physical ones) stay
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
