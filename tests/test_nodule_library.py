"""Real-nodule library: patch reading, get_params-style draws, insertion onto the host grid, real LUNA16 patches."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ct_projection.ingest import load_ct
from ct_projection.lungs import lung_mask
from ct_projection.nodule_library import (
    LibraryConfig,
    LibraryNoduleParams,
    LibrarySampler,
    NoduleLibrary,
    NoduleLibraryError,
    library_deltas,
)
from ct_projection.nodules import NoduleConfig, NoduleSampler
from tests.conftest import SHARED_DATA, write_chest_phantom

LUNA = SHARED_DATA / "ct" / "luna16-nodule-patches" / "patches"
NODULE_HU, LUNG_HU, RADIUS_MM = 40.0, -850.0, 6.0


def write_patch_pair(folder: Path, uid: str = "1.2.3", k: int = 0, spacing: tuple = (1.0, 1.0, 1.0)) -> Path:
    """A 32 mm cube of noisy lung with a solid ball of radius 6 mm and a vessel running from it to the edge."""
    folder.mkdir(parents=True, exist_ok=True)
    n = [int(round(32 / s)) for s in spacing]
    x, y, z = np.meshgrid(*[(np.arange(m) + 0.5) * s - 16.0 for m, s in zip(n, spacing)], indexing="ij")
    rng = np.random.default_rng(k)
    hu = LUNG_HU + rng.normal(0, 20, x.shape)
    ball = x**2 + y**2 + z**2 <= RADIUS_MM**2
    vessel = (y**2 + z**2 <= 1.2**2) & (x > 0)
    hu[vessel] = 30.0
    hu[ball] = NODULE_HU + rng.normal(0, 20, int(ball.sum()))
    for name, arr in ((f"{uid}_dcm_{k}.mha", np.rint(hu).astype(np.int16)), (f"{uid}_seg_{k}.mha", ball.astype(np.uint8))):
        img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(folder / name))
    return folder


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    path = write_chest_phantom(tmp_path_factory.mktemp("host") / "chest.nii.gz")
    vol = load_ct(path)
    return vol, lung_mask(vol)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> NoduleLibrary:
    folder = tmp_path_factory.mktemp("lib")
    write_patch_pair(folder, k=0)
    write_patch_pair(folder, k=1, spacing=(0.8, 0.8, 1.6))  # anisotropic patches work too
    return NoduleLibrary(folder)


def _sampler(library: NoduleLibrary, **kw: object) -> LibrarySampler:
    cfg = NoduleConfig(count_range=(2, 2), diameter_range_mm=(8.0, 20.0), **kw)  # type: ignore[arg-type]
    return LibrarySampler(NoduleSampler(cfg), library)


def test_library_reads_pairs_and_refuses_bad_folders(library: NoduleLibrary, tmp_path: Path) -> None:
    assert len(library) == 2
    patch = library.patch(1)
    assert patch.spacing.tolist() == pytest.approx([0.8, 0.8, 1.6])
    assert patch.diameter_mm == pytest.approx(2 * RADIUS_MM, rel=0.06)
    assert patch.background_hu == pytest.approx(LUNG_HU, abs=5)
    assert patch.mean_hu == pytest.approx(NODULE_HU, abs=5)
    assert library.size(1)[0] == pytest.approx(patch.diameter_mm) and library.size(1)[1] == pytest.approx(patch.extent_mm)
    with pytest.raises(NoduleLibraryError, match="not a folder"):
        NoduleLibrary(tmp_path / "nowhere")
    with pytest.raises(NoduleLibraryError, match="no nodule patches"):
        NoduleLibrary(tmp_path)
    write_patch_pair(tmp_path / "half")
    (tmp_path / "half" / "1.2.3_seg_0.mha").unlink()
    with pytest.raises(NoduleLibraryError, match="no mask 1.2.3_seg_0.mha"):
        NoduleLibrary(tmp_path / "half")
    with pytest.raises(NoduleLibraryError, match="--library-fraction"):
        LibraryConfig(fraction=1.5)


def test_params_are_drawn_first_recorded_and_reproducible(host, library: NoduleLibrary) -> None:
    vol, lungs = host
    s = _sampler(library)
    a = s.get_params(np.random.default_rng(3), vol, lungs)
    b = s.get_params(np.random.default_rng(3), vol, lungs)
    assert len(a) == 2 and [p.to_dict() for p in a] == [p.to_dict() for p in b]
    for p in a:
        assert isinstance(p, LibraryNoduleParams)
        d = p.to_dict()
        assert d["source"] == "library" and len(d["patch_id"]) == 16 and 0.85 <= d["scale"] <= 1.15
        rot = np.asarray(d["rotation"])
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and np.linalg.det(rot) == pytest.approx(1.0)
        assert len(d["flip"]) == 3 and d["side"] in ("left", "right") and d["zone"] in ("upper", "middle", "lower")
        assert lungs[tuple(int(round(v)) for v in p.centre_voxel)]
    # Two nodules keep clear of each other (their blend balls do not overlap)
    c0, c1 = (np.asarray(p.centre_world_mm) for p in a)
    assert np.linalg.norm(c0 - c1) >= a[0].extent_mm + a[1].extent_mm
    # fraction 0 → parametric only; a mix draws both kinds
    none = LibrarySampler(NoduleSampler(NoduleConfig(count_range=(3, 3), diameter_range_mm=(8.0, 12.0))),
                          NoduleLibrary(library.folder, LibraryConfig(fraction=0.0)))  # fmt: skip
    assert not any(isinstance(p, LibraryNoduleParams) for p in none.get_params(np.random.default_rng(0), vol, lungs))
    mixed = LibrarySampler(NoduleSampler(NoduleConfig(count_range=(3, 3), diameter_range_mm=(6.0, 10.0))),
                           NoduleLibrary(library.folder, LibraryConfig(fraction=0.5)))  # fmt: skip
    kinds = set()
    for seed in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kinds |= {type(p).__name__ for p in mixed.get_params(np.random.default_rng(seed), vol, lungs)}
    assert kinds == {"LibraryNoduleParams", "NoduleParams"}


def test_insertion_blends_into_host_and_leaves_the_rest(host, library: NoduleLibrary) -> None:
    vol, lungs = host
    params = _sampler(library).get_params(np.random.default_rng(5), vol, lungs)
    (ins, _) = library_deltas(vol, params, library)
    patch = library.patch(params[0].patch_index)
    # Host HU outside the blend region is untouched: ΔHU is exactly 0 where the weight is 0.
    assert np.all(ins.delta_hu[ins.weight == 0] == 0) and (ins.weight == 0).any()
    # The blend region lies inside the host lung (placement kept it there).
    assert lungs[ins.slices][ins.weight > 0].all()
    new = vol.hu[ins.slices] + ins.delta_hu
    core = ins.occupancy > 0.99
    host_lung = float(vol.hu[ins.slices][(ins.weight == 0) & lungs[ins.slices]].mean())
    # Inside: the nodule's contrast over its own lung background, on top of the host lung.
    assert new[core].mean() == pytest.approx(host_lung + patch.mean_hu - patch.background_hu, abs=25)
    # Volume follows the applied scale (resampled mask on the host grid: 4 x 4 x 6 mm voxels, coarse).
    expected = patch.volume_mm3 * params[0].scale ** 3
    assert ins.volume_mm3 == pytest.approx(expected, rel=0.2)
    assert ins.contrast_hu == pytest.approx(NODULE_HU - LUNG_HU, abs=10)
    # Surface points are around the centre at the scaled radius.
    r = np.linalg.norm(ins.surface_world_mm - np.asarray(params[0].centre_world_mm), axis=1)
    assert np.median(r) == pytest.approx(RADIUS_MM * params[0].scale, abs=1.0)
    # Deterministic: the same params give byte-identical ΔHU.
    again = library_deltas(vol, params, library)[0]
    assert np.array_equal(again.delta_hu, ins.delta_hu) and again.offset == ins.offset


def test_attached_vessel_comes_in_only_near_the_nodule(library: NoduleLibrary) -> None:
    """The vessel leaving the ball is brought in within dilate + edge of the mask, not out to the patch edge."""
    from ct_projection.volume import CTVolume

    hu = np.full((40, 40, 40), LUNG_HU, np.float32)
    vol = CTVolume(hu, np.diag([1.0, 1.0, 1.0, 1.0]))
    p = LibraryNoduleParams(
        patch_index=0, patch_id="x", source_diameter_mm=12.0, source_spacing_mm=[1.0] * 3, scale=1.0,
        rotation=np.eye(3).tolist(), flip=[False] * 3, centre_world_mm=[20.0] * 3, centre_voxel=[20.0] * 3,
        extent_mm=library.patch(0).extent_mm,
    )  # fmt: skip
    (ins,) = library_deltas(vol, [p], library)
    full = np.zeros_like(hu)
    full[ins.slices] = ins.delta_hu
    along = full[:, 20, 20]  # the vessel runs along +x from the ball's surface (x = 26)
    cfg = library.config
    assert along[20 + 6 + 1] > 500  # vessel right outside the ball: brought in
    assert along[20 + 6 + int(np.ceil(cfg.dilate_mm + cfg.edge_mm)) + 2] == 0  # farther out: host untouched
    assert full[20, 20 + 6 + 5, 20] == 0 and abs(full[20, 20 + 6 + 1, 20]) < 80  # lung beside the ball beyond the blend edge: untouched


@pytest.mark.skipif(not LUNA.is_dir(), reason="shared LUNA16 nodule patches not present")
def test_real_luna16_patches_insert(host) -> None:
    vol, lungs = host
    lib = NoduleLibrary(LUNA)
    assert len(lib) == 251
    s = LibrarySampler(NoduleSampler(NoduleConfig(count_range=(1, 1), diameter_range_mm=(6.0, 14.0))), lib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = s.get_params(np.random.default_rng(1), vol, lungs)
    (ins,) = library_deltas(vol, params, lib)
    patch = lib.patch(params[0].patch_index)
    assert 6.0 <= params[0].diameter_mm <= 14.0 * 1.01
    assert patch.background_hu < -600 and patch.mean_hu > patch.background_hu + 200  # a real dense nodule in lung
    assert np.all(ins.delta_hu[ins.weight == 0] == 0) and ins.delta_hu.max() > 200


# --- through the pipeline ----------------------------------------------------------------------------------------


def _library_config(folder: Path, **kw: object):
    from ct_projection.geometry import ProjectionGeometry
    from pipeline.config import GenerateConfig

    return GenerateConfig(
        images_per_ct=2,
        geometry=ProjectionGeometry(size_px=96),
        nodules=NoduleConfig(count_range=(2, 2), diameter_range_mm=(10.0, 16.0)),
        nodule_library=str(folder),
        **kw,  # type: ignore[arg-type]
    )


def test_generate_with_library_labels_resume_and_dicom(library: NoduleLibrary, tmp_path: Path) -> None:
    import hashlib
    import json

    from data.coco import read_coco
    from data.images import read_png16
    from pipeline.generate import generate

    ct = write_chest_phantom(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    config = _library_config(library.folder, dicom=True, library_fraction=0.5)
    first = generate([str(ct)], out, config, device="cpu", progress=False)
    records = read_coco(out / "annotations" / "coco.json")
    kinds = [n.attributes.get("source", "parametric") for r in records for n in r.nodules]
    assert "library" in kinds  # labels for library nodules like for parametric ones
    for rec in records:
        image, free = read_png16(out / rec.file_name), read_png16(out / rec.attributes["nodule_free_file"])
        for n in rec.nodules:
            x, y, w, h = (int(v) for v in n.bbox_xywh)
            assert n.footprint[y : y + h, x : x + w].sum() == n.footprint.sum() > 0  # box holds the footprint
            assert (image[n.footprint].astype(int) - free[n.footprint]).mean() > 0  # the nodule attenuates there
            assert {"faint", "conspicuity"} <= set(n.attributes)
            if n.attributes.get("source") == "library":
                assert {"patch_id", "scale", "rotation", "flip", "mean_hu", "volume_mm3"} <= set(n.attributes)
        assert (out / "dicom" / f"{rec.stem}.dcm").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["nodule_library_sha256"] == library.digest() and "nodule_library" not in saved  # no local path
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}
    again = generate([str(ct)], out, config, device="cpu", progress=False)  # resume: all verified, nothing redone
    assert again.skipped_done == 2 and len(again.records) == len(first.records)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()} == digest


def test_library_settings_need_the_same_library(library: NoduleLibrary, tmp_path: Path) -> None:
    from pipeline.config import GenerateConfig

    with pytest.raises(ValueError, match="--nodule-library"):
        GenerateConfig(nodule_library_sha256=library.digest())
    other = write_patch_pair(tmp_path / "other", k=3)
    with pytest.raises(ValueError, match="not the library these settings were made with"):
        GenerateConfig(nodule_library=str(other), nodule_library_sha256=library.digest())
    assert "nodule_library_sha256" not in GenerateConfig().to_dict()  # runs without a library: fingerprints unchanged
