"""Fast tests for the data/ package: atomic writes, PNG16, COCO, YOLO, NODE21, manifest, contact sheet."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from data import atomic as atomic_mod
from data.atomic import DatasetWriteError, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from data.coco import build_coco, read_coco, write_coco
from data.contact_sheet import BOX_COLOUR, FAINT_BOX_COLOUR, TITLE_HEIGHT, contact_sheet
from data.images import read_image, read_png16, write_png8, write_png16
from data.manifest import Manifest, write_run_info
from data.node21 import read_node21_csv, write_node21_csv
from data.records import ImageRecord, NoduleLabel, bbox_from_mask
from data.yolo import read_yolo_labels, write_yolo, yolo_lines

# pycocotools' own decode() trips a NumPy 2 copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 32, 48


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _records() -> list[ImageRecord]:
    """Two images with nodules (one with two) and one nodule-free image."""
    fp1, fp2 = _disc(10, 12, 4), _disc(22, 35, 3.2)
    attrs = {"type": "solid", "diameter_mm": 8.5, "mean_hu": -50.0, "faint": False, "centre_world_mm": (1.5, -2.0, 3.25)}
    rec1 = ImageRecord(
        "images/ct-3f2a_0001.png",
        W,
        H,
        nodules=[
            NoduleLabel(1, bbox_from_mask(fp1), fp1, attributes=attrs),
            NoduleLabel(2, bbox_from_mask(fp2), fp2, attributes={"type": "part-solid", "diameter_mm": np.float32(6.0)}),
        ],
        attributes={"ct_checksum": "ab" * 32, "view": "PA", "seed": 7, "pixel_spacing_mm": [0.5, 0.5]},
    )
    fp3 = _disc(5, 40, 2)
    rec2 = ImageRecord("images/ct-3f2a_0002.png", W, H, nodules=[NoduleLabel(1, bbox_from_mask(fp3), fp3)])
    rec3 = ImageRecord("images/ct-3f2a_0003.png", W, H, attributes={"pair_of": "images/ct-3f2a_0001.png"})
    return [rec1, rec2, rec3]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- atomic writes -------------------------------------------------------------------------------------------


def test_atomic_write_json_deterministic(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"b": np.float32(0.1), "a": (1, 2), "c": np.arange(2)})
    text = p.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": float(np.float32(0.1)), "c": [0, 1]}
    first = sha256_file(p)
    atomic_write_json(p, {"c": np.arange(2), "a": (1, 2), "b": np.float32(0.1)})
    assert sha256_file(p) == first
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)
    assert _leftovers(p.parent) == []


def test_atomic_replace_failure_removes_temp_and_keeps_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(src: str, dst: str, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic_mod.os, "replace", boom)
    with pytest.raises(DatasetWriteError) as info:
        atomic_write_text(p, "new")
    msg = str(info.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg and "EIO" in msg
    assert p.read_text() == "old" and _leftovers(tmp_path) == []


def test_atomic_enospc_on_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:  # the data only has to hit the disk at fsync; simulate it failing there
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_mod.os, "fsync", full_disk)
    with pytest.raises(DatasetWriteError, match="ENOSPC"):
        atomic_write_bytes(tmp_path / "b.bin", b"x" * 100)
    monkeypatch.setattr(atomic_mod.os, "fsync", real_fsync)
    assert not (tmp_path / "b.bin").exists() and _leftovers(tmp_path) == []


def test_atomic_enospc_from_file_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls: list[int] = []

    def full_after_one(fd: int, data: bytes) -> int:  # a partial write, then the disk is full
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:2]))

    monkeypatch.setattr(atomic_mod.os, "write", full_after_one)
    with pytest.raises(DatasetWriteError, match="No space left"):
        atomic_write_bytes(tmp_path / "c.bin", b"data")
    assert calls == [4, 2]  # the short write was continued, not taken for the whole
    assert list(tmp_path.iterdir()) == []


def test_atomic_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatasetWriteError) as info:
        atomic_write_json(blocker / "out.json", {"a": 1})
    assert str(info.value).startswith(str(blocker / "out.json") + ": ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_atomic_non_writable_dir(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions not enforced (running as root)")
        with pytest.raises(DatasetWriteError, match="EACCES"):
            atomic_write_text(ro / "x.txt", "x")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_atomic_bad_json_and_error_pickles(tmp_path: Path) -> None:
    with pytest.raises(DatasetWriteError, match="JSON"):
        atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    err = pickle.loads(pickle.dumps(DatasetWriteError("/a/b", "disk full")))
    assert str(err) == "/a/b: disk full" and err.path == "/a/b"


# --- images --------------------------------------------------------------------------------------------------


def test_png16_round_trip_and_determinism(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    img[0, 0], img[0, 1] = 0, 65535
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_png16(a, img)
    write_png16(b, img.byteswap().view(img.dtype.newbyteorder()))  # same values, big-endian buffer
    assert np.array_equal(read_png16(a), img) and read_png16(a).dtype == np.uint16
    assert sha256_file(a) == sha256_file(b)
    with Image.open(a) as im:
        assert im.mode.startswith("I") and im.size == (W, H) and not im.info.get("dpi")
    assert np.allclose(read_image(a), img / 65535.0, atol=1e-6)
    with pytest.raises(ValueError):
        write_png16(tmp_path / "c.png", img.astype(np.float32))


def test_png8_and_read_image(tmp_path: Path) -> None:
    grad = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    write_png8(tmp_path / "g.png", grad)
    assert np.abs(read_image(tmp_path / "g.png") - grad).max() <= 0.5 / 255 + 1e-6
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 1] = 200
    write_png8(tmp_path / "rgb.png", rgb)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    for name in ("rgb.png", "rgb.jpg"):
        out = read_image(tmp_path / name)
        assert out.dtype == np.float32 and out.shape == (H, W) and 0.0 <= out.min() <= out.max() <= 1.0


# --- records -------------------------------------------------------------------------------------------------


def test_records_json_round_trip_and_validation() -> None:
    recs = _records()
    back = [ImageRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in recs]
    assert back == recs
    assert bbox_from_mask(np.pad(np.ones((3, 10), bool), ((5, 0), (10, 0)))) == (10.0, 5.0, 10.0, 3.0)
    with pytest.raises(ValueError):
        ImageRecord("../x.png", W, H)
    with pytest.raises(ValueError):
        ImageRecord("images/x.png", W, H, nodules=[NoduleLabel(1, (0, 0, 1, 1), np.zeros((H + 1, W), bool))])


# --- COCO ----------------------------------------------------------------------------------------------------


def test_coco_loads_in_pycocotools(tmp_path: Path) -> None:
    recs = _records()
    path = write_coco(tmp_path / "annotations.json", recs, {"description": "test", "version": "0.1.0"})
    coco = COCO(str(path))
    assert coco.getCatIds() == [1] and coco.loadCats(1)[0]["name"] == "nodule"
    assert sorted(coco.getImgIds()) == [1, 2, 3] and coco.getAnnIds(imgIds=[3]) == []
    anns = coco.loadAnns(coco.getAnnIds())
    footprints = [n.footprint for r in recs for n in r.nodules]
    assert [a["id"] for a in anns] == [1, 2, 3] and [a["image_id"] for a in anns] == [1, 1, 2]
    for ann, fp in zip(anns, footprints):
        mask = coco.annToMask(ann).astype(bool)
        assert np.array_equal(mask, fp)
        assert ann["area"] == fp.sum() and ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(fp)
        assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
    assert anns[0]["attributes"]["diameter_mm"] == 8.5
    assert build_coco(recs, {"v": 1}) == build_coco(recs, {"v": 1})


def test_coco_round_trip(tmp_path: Path) -> None:
    recs = _records()
    recs.append(ImageRecord("images/box_only.png", W, H, nodules=[NoduleLabel(4, (3.5, 4.0, 5.0, 6.0))]))
    path = write_coco(tmp_path / "c.json", recs, {})
    back = read_coco(path)
    assert back[:3] == [ImageRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in recs[:3]]
    assert back[3].nodules[0].footprint is None and back[3].nodules[0].bbox_xywh == (3.5, 4.0, 5.0, 6.0)
    assert COCO(str(path)).annToMask(COCO(str(path)).loadAnns(4)[0]).sum() > 0  # box-only still rasterizes


# --- YOLO ----------------------------------------------------------------------------------------------------


def test_yolo_values_and_round_trip(tmp_path: Path) -> None:
    recs = _records()
    yaml_path = write_yolo(tmp_path, recs)
    lines = (tmp_path / "labels" / "ct-3f2a_0001.txt").read_text().splitlines()
    assert len(lines) == 2
    x, y, w, h = recs[0].nodules[0].bbox_xywh
    cls, cx, cy, nw, nh = lines[0].split()
    assert cls == "0" and all(len(v.split(".")[1]) == 6 for v in (cx, cy, nw, nh))
    assert float(cx) == pytest.approx((x + w / 2) / W, abs=1e-6) and float(nh) == pytest.approx(h / H, abs=1e-6)
    assert (tmp_path / "labels" / "ct-3f2a_0003.txt").read_text() == ""
    back = read_yolo_labels(tmp_path / "labels" / "ct-3f2a_0001.txt", W, H)
    for (c, box), n in zip(back, recs[0].nodules):
        assert c == 0 and np.allclose(box, n.bbox_xywh, atol=1e-4)
    text = yaml_path.read_text()
    assert "nc: 1" in text and '0: "nodule"' in text and "train:" in text and "val:" in text
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(text)
    assert data["names"] == {0: "nodule"} and "path" not in data  # relative to data.yaml: relocatable


def test_yolo_splits_and_clipping(tmp_path: Path) -> None:
    rec = ImageRecord("images/e.png", W, H, nodules=[NoduleLabel(1, (-4.0, 30.0, 10.0, 10.0))])
    write_yolo(tmp_path, [rec], splits={"train": ["images/e.png"]})
    assert (tmp_path / "train.txt").read_text() == "./images/e.png\n"
    assert 'val: "train.txt"' in (tmp_path / "data.yaml").read_text()
    ((_, (x, y, w, h)),) = read_yolo_labels(tmp_path / "labels" / "e.txt", W, H)
    assert (x, y) == pytest.approx((0, 30), abs=1e-4) and (x + w, y + h) == pytest.approx((6, H), abs=1e-4)


def test_yolo_faint_labels_drop_and_keep(tmp_path: Path) -> None:
    recs = _records()
    recs[0].nodules[1].attributes["faint"] = True
    assert len(yolo_lines(recs[0], faint_labels="keep")) == 2
    (line,) = yolo_lines(recs[0], faint_labels="drop")  # only the non-faint one is left
    assert line == yolo_lines(recs[0])[0]
    write_yolo(tmp_path, recs, faint_labels="drop", comments=["split: test"])
    text = (tmp_path / "data.yaml").read_text()
    assert "# faint_labels: drop" in text and "# split: test" in text
    assert len((tmp_path / "labels" / "ct-3f2a_0001.txt").read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="--faint-labels.*drop, keep"):
        yolo_lines(recs[0], faint_labels="sometimes")


# --- NODE21 --------------------------------------------------------------------------------------------------


def test_node21_csv(tmp_path: Path) -> None:
    recs = _records()
    recs[1].nodules[0].bbox_xywh = (39.5, 3.2, 4.1, 4.0)
    path = write_node21_csv(tmp_path / "metadata.csv", recs)
    text = path.read_text()
    # NODE21's six columns first, unchanged; faint and conspicuity after them (empty when not decided)
    assert text.splitlines()[0] == "img_name,x,y,width,height,label,faint,conspicuity" and "\r" not in text
    rows = read_node21_csv(path)
    assert [r.img_name for r in rows] == ["ct-3f2a_0001.png", "ct-3f2a_0001.png", "ct-3f2a_0002.png", "ct-3f2a_0003.png"]
    assert [r.label for r in rows] == [1, 1, 1, 0]
    assert [r.faint for r in rows] == [0, None, None, None]
    assert tuple(rows[3])[1:6] == (0, 0, 0, 0, 0)
    assert tuple(rows[2])[1:5] == (39, 3, 5, 5)  # floor 39.5->39, ceil 43.6->44; floor 3.2->3, ceil 7.2->8
    x, y, w, h = recs[0].nodules[0].bbox_xywh
    assert tuple(rows[0])[1:5] == (int(x), int(y), int(w), int(h))
    (tmp_path / "six.csv").write_text("img_name,x,y,width,height,label\na.png,1,2,3,4,1\n")  # plain NODE21 reads
    assert read_node21_csv(tmp_path / "six.csv") == [("a.png", 1, 2, 3, 4, 1, None, None)]
    (tmp_path / "bad.csv").write_text("name,x,y,w,h,label\n")
    with pytest.raises(ValueError, match="header"):
        read_node21_csv(tmp_path / "bad.csv")


# --- manifest ------------------------------------------------------------------------------------------------


def test_manifest_append_and_torn_last_line(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "manifest.jsonl")
    assert m.read() == []
    recs = _records()
    m.append({"image": recs[0].to_json(), "status": "done"})
    m.append({"status": "done", "n": np.int64(2)})
    lines = m.path.read_text().splitlines()
    assert len(lines) == 2 and lines[1] == '{"n":2,"status":"done"}'
    with open(m.path, "ab") as fh:  # simulate a crash mid-write
        fh.write(b'{"status": "do')
    entries = m.read()
    assert len(entries) == 2 and ImageRecord.from_json(entries[0]["image"]) == recs[0]
    m2 = Manifest(m.path)  # a restarted run drops the torn tail before appending
    m2.append({"status": "done", "n": 3})
    assert [e.get("n") for e in m2.read()] == [None, 2, 3]
    assert m2.path.read_text().count("\n") == 3
    with open(m.path, "ab") as fh:
        fh.write(b"garbage\n{}\n")
    with pytest.raises(ValueError, match="corrupt"):
        m2.read()


def test_write_run_info(tmp_path: Path) -> None:
    info = {"seed": 1, "versions": {"numpy": np.__version__}, "ct_checksums": ["ab" * 32]}
    p = write_run_info(tmp_path / "dataset.json", info)
    assert json.loads(p.read_text()) == info
    with pytest.raises(DatasetWriteError, match="PatientName"):
        write_run_info(tmp_path / "bad.json", {"cts": [{"PatientName": "X"}]})
    assert not (tmp_path / "bad.json").exists()


# --- contact sheet -------------------------------------------------------------------------------------------


def test_contact_sheet(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(1000, 3000, size=(H, W), dtype=np.uint16) for _ in range(3)]
    boxes = [[(10.0, 8.0, 8.0, 6.0)], [], [(0.0, 0.0, 4.0, 4.0), (40.0, 20.0, 8.0, 12.0)]]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    contact_sheet(imgs, boxes, ["one", "two", "three"], a, cols=2, thumb=96)
    contact_sheet(imgs, boxes, ["one", "two", "three"], b, cols=2, thumb=96)
    assert sha256_file(a) == sha256_file(b)
    with Image.open(a) as im:
        assert im.mode == "RGB" and im.size == (2 * 96, 2 * (TITLE_HEIGHT + 96))
        px = np.asarray(im)
    scale = 96 / W  # thumbnails are 96 x 64
    # Top-left corner of box 1 in tile 0 and the bottom-right corner of the last box in tile 2.
    assert tuple(px[TITLE_HEIGHT + int(8 * scale), int(10 * scale)]) == BOX_COLOUR
    assert tuple(px[(TITLE_HEIGHT + 96) + TITLE_HEIGHT + 63, 95]) == BOX_COLOUR
    tile1 = px[TITLE_HEIGHT : TITLE_HEIGHT + 64, 96:192]
    assert not np.all(tile1 == np.array(BOX_COLOUR), axis=-1).any()  # no boxes -> no red
    assert px[:TITLE_HEIGHT, :96].any()  # title text drawn
    with pytest.raises(ValueError):
        contact_sheet(imgs, boxes[:2], ["x"] * 3, tmp_path / "c.png")
    # faint nodules are drawn in their own colour
    contact_sheet(imgs, boxes, ["one", "two", "three"], tmp_path / "f.png", cols=2, thumb=96,
                  faint=[[True], [], [False, True]])  # fmt: skip
    with Image.open(tmp_path / "f.png") as im:
        pf = np.asarray(im)
    assert tuple(pf[TITLE_HEIGHT + int(8 * scale), int(10 * scale)]) == FAINT_BOX_COLOUR
    with pytest.raises(ValueError, match="faint flags"):
        contact_sheet(imgs, boxes, ["x"] * 3, tmp_path / "g.png", faint=[[True], [], [False]])
