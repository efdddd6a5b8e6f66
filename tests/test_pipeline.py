"""End to end: CT → nodules → DRR → dataset, on a small synthetic chest CT; formats, determinism, bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ct_projection.geometry import ProjectionGeometry
from ct_projection.nodules import NoduleConfig
from pipeline.cli import app
from pipeline.config import GenerateConfig
from pipeline.generate import generate

SIZE = 96


def small_config(seed: int = 0, n: int = 2) -> GenerateConfig:
    """Fast settings: 96 px detector, solid spheres large enough to see at this resolution."""
    return GenerateConfig(
        images_per_ct=n,
        seed=seed,
        geometry=ProjectionGeometry(size_px=SIZE),
        nodules=NoduleConfig(
            count_range=(1, 2), diameter_range_mm=(14.0, 22.0), type_probs={"solid": 1.0}, shape_probs={"sphere": 1.0}
        ),
    )


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(chest_nifti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    result = generate([str(chest_nifti)], out, small_config(), device="cpu", progress=False)
    assert len(result.records) == 2 and not result.failed
    return out


def test_dataset_layout(dataset: Path) -> None:
    for name in ("annotations/coco.json", "metadata.csv", "data.yaml", "manifest.jsonl", "dataset.json",
                 "config.json", "contact_sheet.png"):
        assert (dataset / name).is_file(), name
    assert len(list((dataset / "images").glob("*.png"))) == 2
    assert len(list((dataset / "images_nodule_free").glob("*.png"))) == 2
    assert len(list((dataset / "labels").glob("*.txt"))) == 2


def test_coco_loads_and_boxes_contain_footprints(dataset: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "annotations" / "coco.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns
    for ann in anns:
        mask = coco.annToMask(ann).astype(bool)
        rows, cols = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert mask.any()
        assert cols.min() >= x and cols.max() < x + w and rows.min() >= y and rows.max() < y + h
        # Tight: the box is the footprint's bounding box.
        assert (cols.min(), rows.min(), cols.max() + 1 - x, rows.max() + 1 - y) == (x, y, w, h)
        attrs = ann["attributes"]
        assert attrs["type"] == "solid" and 14.0 <= attrs["diameter_mm"] <= 22.0
        # Cross-check: DiffDRR's projection of the 3D surface agrees with the rendered box within ~2 px.
        px, py, pw, ph = attrs["projected_box_xywh"]
        assert abs(px - x) <= 2 and abs(py - y) <= 2 and abs(px + pw - x - w) <= 2 and abs(py + ph - y - h) <= 2


def test_nodule_is_where_the_image_changed(dataset: Path) -> None:
    """With/without pair: the difference image is non-zero exactly around the labelled boxes."""
    from data.images import read_png16
    from data.records import ImageRecord

    for line in (dataset / "manifest.jsonl").read_text().splitlines():
        rec = ImageRecord.from_json(json.loads(line)["record"])
        with_n = read_png16(dataset / rec.file_name).astype(np.int64)
        without = read_png16(dataset / rec.attributes["nodule_free_file"]).astype(np.int64)
        diff = with_n - without
        assert (diff >= 0).all()  # nodules only add attenuation
        union = np.zeros_like(diff, dtype=bool)
        for n in rec.nodules:
            assert diff[n.footprint].mean() > 50  # clearly brighter inside the footprint
            x, y, w, h = (int(v) for v in n.bbox_xywh)
            union[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2] = True
        assert np.abs(diff[~union]).max() <= 1  # quantisation only, elsewhere


def test_yolo_and_node21_agree_with_coco(dataset: Path) -> None:
    from data.coco import read_coco
    from data.node21 import read_node21_csv
    from data.yolo import read_yolo_labels

    records = read_coco(dataset / "annotations" / "coco.json")
    rows = read_node21_csv(dataset / "metadata.csv")
    assert (dataset / "metadata.csv").read_text().splitlines()[0] == "img_name,x,y,width,height,label"
    assert sum(len(r.nodules) for r in records) == sum(1 for r in rows if r.label == 1)
    for rec in records:
        boxes = read_yolo_labels(dataset / "labels" / f"{rec.stem}.txt", rec.width, rec.height)
        assert len(boxes) == len(rec.nodules)
        for (_, box), nod in zip(boxes, rec.nodules):
            assert np.allclose(box, nod.bbox_xywh, atol=0.01)


def test_provenance_has_checksums_and_versions(dataset: Path, chest_nifti: Path) -> None:
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["sources"][0]["sha256"] == hashlib.sha256(chest_nifti.read_bytes()).hexdigest()
    assert info["software"]["diffdrr"] == "0.6.1"
    assert info["config"]["seed"] == 0 and info["images"] == 2
    assert str(chest_nifti) not in (dataset / "dataset.json").read_text()  # no input paths in outputs


def test_same_seed_is_byte_identical_and_other_seed_differs(chest_nifti: Path, tmp_path: Path, dataset: Path) -> None:
    again = tmp_path / "again"
    generate([str(chest_nifti)], again, small_config(), device="cpu", progress=False)
    assert tree_digest(again) == tree_digest(dataset)
    other = tmp_path / "other"
    generate([str(chest_nifti)], other, small_config(seed=1, n=1), device="cpu", progress=False)
    a = (dataset / "annotations" / "coco.json").read_bytes()
    assert (other / "annotations" / "coco.json").read_bytes() != a


def test_bad_ct_is_skipped_and_the_rest_complete(chest_nifti: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    result = generate([str(bad), str(chest_nifti)], tmp_path / "out", small_config(n=1), device="cpu", progress=False)
    assert len(result.records) == 1
    assert len(result.failed) == 1 and str(bad) in result.failed[0] and "\n" not in result.failed[0]


def _bad_input(folder: Path, kind: str) -> Path:
    """Create one kind of bad input in ``folder``."""
    if kind == "missing":
        return folder / "missing.nii.gz"
    if kind == "zero-byte":
        (folder / "empty.nii.gz").write_bytes(b"")
        return folder / "empty.nii.gz"
    if kind == "unsupported":
        (folder / "notes.txt").write_text("x")
        return folder / "notes.txt"
    (folder / "nodicom").mkdir()
    (folder / "nodicom" / "readme.md").write_text("no images here")
    return folder / "nodicom"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("missing", "does not exist"), ("zero-byte", "zero-byte"), ("unsupported", "unsupported"), ("folder", "no")],
)
def test_cli_bad_input_one_line_error(tmp_path: Path, kind: str, expected: str) -> None:
    path = _bad_input(tmp_path, kind)
    result = CliRunner().invoke(app, ["generate", str(path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code != 0
    err = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and str(path) in err[0] and expected in err[0].lower(), result.output
    assert "Traceback" not in result.output


def test_cli_no_lungs_is_a_clear_error(tmp_path: Path) -> None:
    import nibabel as nib

    hu = np.full((40, 40, 30), -1000, np.int16)
    hu[5:35, 5:35, :] = 40  # a soft-tissue block: a CT with no lungs in view
    path = tmp_path / "abdomen.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([5.0, 5.0, 5.0, 1.0])), str(path))
    result = CliRunner().invoke(app, ["generate", str(path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 1
    assert "no lungs" in result.output and str(path) in result.output and "Traceback" not in result.output


def test_cli_rejects_bad_option_values_listing_allowed(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "--view", "oblique", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "PA, AP, LAT" in result.output
