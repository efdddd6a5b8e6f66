"""End to end: CT → nodules → DRR → dataset, on a small synthetic chest CT; formats, determinism, bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ct_projection.display import DisplayConfig
from ct_projection.geometry import ProjectionGeometry
from ct_projection.nodules import NoduleConfig
from ct_projection.physics.acquisition import PhysicsConfig
from pipeline.cli import app
from pipeline.config import GenerateConfig
from pipeline.generate import generate

SIZE = 96


def small_config(seed: int = 0, n: int = 2) -> GenerateConfig:
    """Fast settings: 96 px detector, solid spheres large enough to see at this resolution; the geometry tests use
    the monoenergetic, noise-free physics and the raw display (pixels are line integrals)."""
    return GenerateConfig(
        images_per_ct=n,
        seed=seed,
        geometry=ProjectionGeometry(size_px=SIZE),
        physics=PhysicsConfig(mode="simple"),
        display=DisplayConfig(mode="raw"),
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
    assert (dataset / "metadata.csv").read_text().splitlines()[0] == "img_name,x,y,width,height,label,faint,conspicuity"
    assert sum(len(r.nodules) for r in records) == sum(1 for r in rows if r.label == 1)
    faint = [int(n.attributes["faint"]) for r in records for n in r.nodules]
    assert [r.faint for r in rows if r.label == 1] == faint  # the csv carries every nodule with its flag
    for rec in records:
        boxes = read_yolo_labels(dataset / "labels" / f"{rec.stem}.txt", rec.width, rec.height)
        visible = [n for n in rec.nodules if not n.attributes["faint"]]  # default --faint-labels drop
        assert len(boxes) == len(visible)
        for (_, box), nod in zip(boxes, visible):
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
    result = CliRunner().invoke(app, ["generate", "--nodules-min", "5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--nodules-min/--nodules-max" in result.output  # names the options typed
    result = CliRunner().invoke(app, ["generate", "--types", "solid=1,big=2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "solid, part_solid, ground_glass" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodules": {"colour": "red"}}))
    result = CliRunner().invoke(app, ["generate", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "'colour'" in result.output and "type_probs" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_config_file_and_options(chest_nifti: Path, tmp_path: Path) -> None:
    """A JSON config sets any nodule/geometry/label field; explicit options override it; config.json records all."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({
        "nodules": {"count_range": [2, 2], "diameter_range_mm": [14, 20], "type_probs": {"ground_glass": 1}},
        "geometry": {"size_px": 64, "view": "AP", "sdd_mm": 1500.0},
        "labels": {"faint_conspicuity": 0.25},
    }))  # fmt: skip
    out = tmp_path / "ds"
    args = ["generate", str(chest_nifti), "--out", str(out), "--config", str(cfg), "-n", "1", "--no-progress",
            "--device", "cpu", "--shapes", "sphere", "--detector-mm", "400"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["geometry"] | {"size_px": 64, "view": "AP", "sdd_mm": 1500.0, "detector_mm": 400.0} == saved["geometry"]
    assert saved["nodules"]["count_range"] == [2, 2]
    assert saved["nodules"]["type_probs"]["ground_glass"] == 1.0 and saved["nodules"]["type_probs"]["solid"] == 0.0
    assert saved["nodules"]["shape_probs"]["sphere"] == 1.0 and saved["nodules"]["shape_probs"]["spiculated"] == 0.0
    assert saved["labels"]["faint_conspicuity"] == 0.25
    records = [json.loads(line)["record"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    nodules = [n for r in records for n in r["nodules"]] + [n for r in records for n in r["attributes"]["unlabelled_nodules"]]
    assert len(nodules) == 2
    assert all(n["attributes"]["type"] == "ground_glass" if "attributes" in n else n["type"] == "ground_glass" for n in nodules)


# ------------------------------------------------------------------- labels, run settings, duplicates, aliases


def test_no_written_box_has_zero_size(dataset: Path) -> None:
    """COCO, YOLO and NODE21 nodule rows all have positive width and height."""
    from data.node21 import read_node21_csv

    coco = json.loads((dataset / "annotations" / "coco.json").read_text())
    assert coco["annotations"]
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in coco["annotations"])
    assert all(r.width > 0 and r.height > 0 for r in read_node21_csv(dataset / "metadata.csv") if r.label == 1)
    for txt in (dataset / "labels").glob("*.txt"):
        for line in txt.read_text().splitlines():
            _, _, _, w, h = (float(v) for v in line.split())
            assert w > 0 and h > 0, (txt, line)


def test_empty_footprints_become_unlabelled_nodules(chest_nifti: Path, tmp_path: Path) -> None:
    """A nodule whose footprint is empty is kept as a fact of the image, never written as a zero-size box."""
    from ct_projection.labels import LabelConfig
    from data.node21 import read_node21_csv

    config = small_config(n=1)
    config.labels = LabelConfig(min_chord_mm=1e4)  # no ray crosses 10 m of nodule: every footprint is empty
    out = tmp_path / "out"
    result = generate([str(chest_nifti)], out, config, device="cpu", progress=False)
    (record,) = result.records
    assert record.nodules == []
    unlabelled = record.attributes["unlabelled_nodules"]
    assert unlabelled and all(u["reason"].startswith("empty footprint") for u in unlabelled)
    assert all(u["footprint_px"] == 0 and u["diameter_mm"] >= 14.0 for u in unlabelled)
    assert json.loads((out / "annotations" / "coco.json").read_text())["annotations"] == []
    assert [(r.width, r.height, r.label) for r in read_node21_csv(out / "metadata.csv")] == [(0, 0, 0)]
    assert (out / "labels" / f"{record.stem}.txt").read_text().strip() == ""


def test_same_ct_twice_is_rendered_once(chest_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    copy = tmp_path / "copy.nii.gz"
    shutil.copy(chest_nifti, copy)
    out = tmp_path / "out"
    result = generate([str(chest_nifti), str(copy)], out, small_config(n=2), device="cpu", progress=False)
    assert len(result.records) == 2 and not result.failed
    assert result.duplicates == [f"{copy}: same CT as {chest_nifti}; skipped"]
    assert f"warning: {copy}: same CT as {chest_nifti}; skipped" in capsys.readouterr().err
    lines = (out / "manifest.jsonl").read_text().splitlines()
    keys = [(json.loads(x)["ct_sha256"], json.loads(x)["sample_index"]) for x in lines]
    assert len(keys) == 2 and len(set(keys)) == 2
    assert len(json.loads((out / "dataset.json").read_text())["sources"]) == 1


def test_other_cts_of_an_earlier_run_are_reported_not_mixed(
    chest_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Same settings, other CT in the same folder: the dataset files list this run's CT, and a note says why."""
    from conftest import write_chest_phantom

    other = write_chest_phantom(tmp_path / "other.nii.gz", seed=3)
    out = tmp_path / "out"
    generate([str(other)], out, small_config(n=1), device="cpu", progress=False)
    capsys.readouterr()
    result = generate([str(chest_nifti)], out, small_config(n=1), device="cpu", progress=False)
    assert len(result.records) == 1
    err = capsys.readouterr().err
    assert "1 finished image(s) of 1 CT(s) not given to this run stay on disk" in err
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert len(coco["images"]) == 1 and len(list((out / "images").glob("*.png"))) == 2


def test_dicom_series_and_alias_are_run_settings(chest_nifti: Path, tmp_path: Path) -> None:
    """Resuming with --dicom (or another series/alias) after a run without it is refused, not silently mixed."""
    from pipeline.run_folder import RunMismatchError

    out = tmp_path / "out"
    generate([str(chest_nifti)], out, small_config(n=1), device="cpu", progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["dicom"] is False and saved["series_uid"] is None and saved["alias"] is None
    for change in ({"dicom": True}, {"series_uid": "3"}, {"alias": "P1"}, {"aliases": {"a" * 64: "P1"}}):
        config = small_config(n=1)
        for key, value in change.items():
            setattr(config, key, value)
        with pytest.raises(RunMismatchError, match="different settings"):
            generate([str(chest_nifti)], out, config, device="cpu", progress=False)
    assert not (out / "dicom").exists()


def test_series_uid_is_kept_only_as_a_hash() -> None:
    config = small_config()
    config.series_uid = "2.25.314159"
    assert config.to_dict()["series_uid"].startswith("sha256:") and "2.25.314159" not in json.dumps(config.to_dict())
    config.series_uid = "3"  # a series number is not identifying
    assert config.to_dict()["series_uid"] == "3"


def test_alias_is_sanitised_and_recorded(chest_nifti: Path, tmp_path: Path) -> None:
    import pydicom

    out = tmp_path / "out"
    args = ["generate", str(chest_nifti), "--out", str(out), "--no-progress", "--size", "48", "-n", "1", "--dicom",
            "--alias", "../Case 7/.."]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "manifest.jsonl").read_text())
    assert entry["record"]["attributes"]["alias"] == "Case_7"
    assert json.loads((out / "dataset.json").read_text())["sources"][0]["alias"] == "Case_7"
    (dcm,) = (out / "dicom").glob("*.dcm")
    ds = pydicom.dcmread(dcm)
    assert str(ds.PatientName) == ds.PatientID == "Case_7"
    assert all("Case" not in p.name for p in out.rglob("*"))  # an alias never names a file


def test_alias_csv_and_alias_errors(chest_nifti: Path, tmp_path: Path) -> None:
    from pipeline.config import read_alias_csv

    sha = hashlib.sha256(chest_nifti.read_bytes()).hexdigest()
    csv = tmp_path / "aliases.csv"
    csv.write_text(f"sha256,alias\n{sha.upper()},Subject 01\n")
    assert read_alias_csv(csv) == {sha: "Subject_01"}
    out = tmp_path / "out"
    args = ["generate", str(chest_nifti), "--out", str(out), "--no-progress", "--size", "48", "-n", "1"]
    result = CliRunner().invoke(app, [*args, "--alias-csv", str(csv)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "dataset.json").read_text())["sources"][0]["alias"] == "Subject_01"
    csv.write_text("not-a-checksum,x\n")
    result = CliRunner().invoke(app, [*args, "--alias-csv", str(csv)])
    assert result.exit_code == 1 and f"error: {csv}: line 1: expected 'sha256,alias'" in result.output
    result = CliRunner().invoke(app, [*args, "--alias", "..."])
    assert result.exit_code == 1 and "is empty after sanitising" in result.output and "Traceback" not in result.output
    two = [*args[:2], str(chest_nifti), *args[2:]]
    result = CliRunner().invoke(app, [*two, "--out", str(tmp_path / "o2"), "--alias", "A"])
    assert result.exit_code == 1 and "--alias names one CT but 2 inputs" in result.output
    assert not (tmp_path / "o2").exists()


def test_cuda_without_cuda_is_one_line_before_any_work(
    chest_nifti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    for device in ("cuda", "cuda:1"):
        result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), "--device", device])
        errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert result.exit_code == 1 and len(errors) == 1, result.output
        assert "no CUDA device is available" in errors[0] and "auto, cpu, cuda, cuda:N" in errors[0]
        assert "Traceback" not in result.output and not out.exists()
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), "--device", "tpu"])
    assert result.exit_code == 1 and "auto, cpu, cuda, cuda:N" in result.output
