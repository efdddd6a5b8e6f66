"""Detector-ready outputs: 8-bit windowed images common loaders read right, real splits, negatives, merging runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ct_projection.display import DisplayConfig
from ct_projection.geometry import ProjectionGeometry
from ct_projection.nodules import NoduleConfig
from data.detector import encode_uint8, lung_window, split_keys
from data.records import ImageRecord
from pipeline.config import GenerateConfig
from pipeline.generate import generate
from tests.conftest import write_chest_phantom


def _config(seed: int, **kw: object) -> GenerateConfig:
    """128 px, solid spheres big enough that some stand out clearly."""
    return GenerateConfig(
        images_per_ct=2,
        seed=seed,
        geometry=ProjectionGeometry(size_px=128),
        nodules=NoduleConfig(
            count_range=(2, 2), diameter_range_mm=(16.0, 24.0), type_probs={"solid": 1.0}, shape_probs={"sphere": 1.0}
        ),
        # Raw display: the 16-bit images are line integrals, the hardest case for loaders that read the high byte.
        display=DisplayConfig(mode="raw"),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs over two different CTs (other seeds), the first with negatives."""
    base = tmp_path_factory.mktemp("runs")
    ct1 = write_chest_phantom(base / "a.nii.gz", seed=0)
    ct2 = write_chest_phantom(base / "b.nii.gz", seed=1)
    generate([str(ct1)], base / "A", _config(0, negatives=True), device="cpu", progress=False)
    generate([str(ct2)], base / "B", _config(1, negatives=True), device="cpu", progress=False)
    return base / "A", base / "B"


def _coco(path: Path) -> dict:
    return json.loads(path.read_text())


def test_detector_images_keep_nodule_contrast_in_common_loaders(runs: tuple[Path, Path]) -> None:
    cv2 = pytest.importorskip("cv2")
    root = runs[0]
    coco = _coco(root / "annotations" / "coco.json")
    checked = 0
    for image in coco["images"]:
        attrs = image["attributes"]
        det, free = root / attrs["detector_file"], root / attrs["detector_nodule_free_file"]
        with Image.open(det) as im:
            assert im.mode == "L"  # plain 8-bit: no loader has to guess a bit depth
        pil = np.asarray(Image.open(det).convert("L"), dtype=np.float64)
        pil_free = np.asarray(Image.open(free).convert("L"), dtype=np.float64)
        ocv = cv2.imread(str(det)).astype(np.float64)[..., 0]  # default flags: 8-bit BGR
        ocv_free = cv2.imread(str(free)).astype(np.float64)[..., 0]
        high_byte = cv2.imread(str(root / image["file_name"])).astype(np.float64)[..., 0]
        high_byte_free = cv2.imread(str(root / attrs["nodule_free_file"])).astype(np.float64)[..., 0]
        assert np.array_equal(pil, ocv)
        window = attrs["detector_window"]
        assert 0 <= window["lo"] < window["hi"] <= 65535 and window["lung_field_px"] > 100
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            if ann["attributes"]["faint"]:
                continue
            from pycocotools import mask as mask_utils

            fp = mask_utils.decode(ann["segmentation"]).astype(bool)
            contrast = (pil[fp] - pil_free[fp]).mean()
            assert contrast >= 10, contrast
            assert (ocv[fp] - ocv_free[fp]).mean() >= 10
            assert contrast > 2 * (high_byte[fp] - high_byte_free[fp]).mean()  # what the 16-bit file gives them
            checked += 1
        # Outside every nodule the twin is the same image: same window, same pixels.
        assert (pil == pil_free).mean() > 0.9
    assert checked >= 1


def test_data_yaml_split_faint_and_negatives(runs: tuple[Path, Path]) -> None:
    root = runs[0]
    text = (root / "data.yaml").read_text()
    assert "# faint_labels: drop" in text and 'train: "detector/train.txt"' in text and 'val: "detector/val.txt"' in text
    train = (root / "detector" / "train.txt").read_text().split()
    val = (root / "detector" / "val.txt").read_text().split()
    assert train and val and not set(train) & set(val)
    for name in train + val:  # Ultralytics resolves ./ against the list's folder; labels mirror images/ → labels/
        image = root / "detector" / name
        assert image.is_file()
        assert (root / "detector" / "labels" / (Path(name).stem + ".txt")).is_file()
    # a negative sits in the same split as its positive twin (same pose), and has no boxes
    for names in (train, val):
        stems = {Path(n).stem for n in names}
        assert {s[: -len("_free")] for s in stems if s.endswith("_free")} == {s for s in stems if not s.endswith("_free")}
    coco = _coco(root / "detector" / "coco.json")
    negatives = [im for im in coco["images"] if "negative_of" in im["attributes"]]
    assert len(negatives) == len(coco["images"]) // 2
    assert not {a["image_id"] for a in coco["annotations"]} & {im["id"] for im in negatives}
    for ann in coco["annotations"]:  # drop: a faint nodule is an ignore region, a visible one a target
        assert ann["iscrowd"] == int(bool(ann["attributes"]["faint"]))
    rows = (root / "detector" / "metadata.csv").read_text().splitlines()
    assert sum(1 for r in rows if "_free.png,0,0,0,0,0" in r) == len(negatives)
    per_split = [_coco(root / "detector" / f"coco_{s}.json") for s in ("train", "val")]
    assert sum(len(c["images"]) for c in per_split) == len(coco["images"])


def test_merge_two_runs_reads_with_pycocotools_and_refuses_clashes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    from pipeline.cli import app

    a, b = runs
    names_a = {p.name for p in (a / "images").iterdir()}
    names_b = {p.name for p in (b / "images").iterdir()}
    assert names_a and names_b and not names_a & names_b  # run tags keep two runs' names apart
    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(out)])
    assert res.exit_code == 0, res.output
    whole = COCO(str(out / "annotations" / "coco.json"))
    assert len(whole.getImgIds()) == len(names_a) + len(names_b)
    n_ann = len(_coco(a / "annotations" / "coco.json")["annotations"]) + len(_coco(b / "annotations" / "coco.json")["annotations"])
    assert sorted(whole.getAnnIds()) == list(range(1, n_ann + 1))  # fresh ids, none repeated
    for split in ("train", "val"):
        det = COCO(str(out / "detector" / f"coco_{split}.json"))
        cts = {det.imgs[i]["attributes"]["ct_sha256"] for i in det.getImgIds()}
        assert len(cts) == 1  # two CTs: one held out whole
        for img in det.imgs.values():
            assert (out / "detector" / img["file_name"]).is_file()
    for image in whole.imgs.values():
        assert (out / image["file_name"]).is_file() and (out / image["attributes"]["detector_file"]).is_file()
    assert json.loads((out / "merged.json").read_text())["images"] == len(whole.getImgIds())

    # the same run twice (a copy of A) clashes on names: one line, nothing written
    copy = tmp_path / "A_copy"
    shutil.copytree(a, copy)
    res = CliRunner().invoke(app, ["merge", str(a), str(copy), "--out", str(tmp_path / "clash")])
    assert res.exit_code == 1 and "both hold" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "clash").exists()
    res = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(out)])
    assert res.exit_code == 1 and "not an empty folder" in res.output
    res = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(a / "inside")])
    assert res.exit_code == 1 and "outside every input" in res.output
    res = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(tmp_path / "x"), "--faint-labels", "some"])
    assert res.exit_code == 1 and "drop, keep" in res.output


def test_run_tag_option_names_files(tmp_path: Path) -> None:
    cfg = _config(0, run_tag="site A/1")
    assert cfg.tag() == "site_A_1"
    assert _config(0).tag() != _config(1).tag() and _config(0).tag() == _config(0).tag()
    with pytest.raises(ValueError, match="--faint-labels"):
        _config(0, faint_labels="never")
    with pytest.raises(ValueError, match="--val-fraction"):
        _config(0, val_fraction=1.0)


def test_split_by_ct_and_by_image() -> None:
    recs = [ImageRecord(f"images/c{c}_{i}.png", 8, 8, attributes={"ct_sha256": f"ct{c}"}) for c in range(5) for i in range(3)]
    where, how = split_keys(recs, 0.2)
    held = {r.attributes["ct_sha256"] for r in recs if where[r.file_name] == "val"}
    assert len(held) == 1 and "1 of 5 CTs" in how
    assert all(where[r.file_name] == "val" for r in recs if r.attributes["ct_sha256"] in held)
    one = recs[:3] + [ImageRecord(f"images/x{i}.png", 8, 8, attributes={"ct_sha256": "ct0"}) for i in range(7)]
    where, how = split_keys(one, 0.2)
    assert sum(v == "val" for v in where.values()) == 2 and "one CT" in how
    assert split_keys(list(reversed(one)), 0.2)[0] == where  # independent of input order


def test_window_uses_lung_field_and_encodes_full_range() -> None:
    pixels = np.full((32, 32), 60000, np.uint16)  # mediastinum/bone: bright
    field = np.zeros((32, 32), bool)
    field[4:28, 4:14] = True
    pixels[field] = np.linspace(10000, 20000, int(field.sum())).astype(np.uint16)
    lo, hi = lung_window(pixels, field)
    assert 10000 <= lo < 10100 and 19900 < hi <= 20000
    img = encode_uint8(pixels, (lo, hi))
    assert img.dtype == np.uint8 and img[field].min() == 0 and img[field].max() == 255 and img[0, 0] == 255


def test_merged_dataset_reads_with_ultralytics(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Ultralytics' own dataset checker and loader take the merged data.yaml as is: every YOLO box arrives."""
    pytest.importorskip("ultralytics")  # optional: pip install ultralytics
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    from pipeline.cli import app

    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["merge", *(str(r) for r in runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = check_det_dataset(str(out / "data.yaml"))
    assert data["nc"] == 1
    n_boxes = 0
    for split in ("train", "val"):
        loaded = YOLODataset(img_path=data[split], data=data, task="detect", imgsz=64, augment=False)
        listed = (out / "detector" / f"{split}.txt").read_text().split()
        assert len(loaded.labels) == len(listed) > 0
        n_boxes += sum(len(label["bboxes"]) for label in loaded.labels)
    yolo_lines = sum(len(p.read_text().split("\n")) - 1 for p in (out / "detector" / "labels").glob("*.txt"))
    assert n_boxes == yolo_lines > 0
