"""Box-size and diameter histograms of generated datasets next to real references (BENCHMARKS.md, nodule sizes).

Compares each dataset's nodule boxes (side = sqrt(w h), scaled to a 1024² image) with the radiologists' "Nodule"
boxes of NIH ChestX-ray8 (``../shared/data/reference/BBox_List_2017.csv``), and its sampled diameters with the 251
LUNA16 nodules of ``../shared/data/ct/luna16-nodule-patches/patches.csv``.

    python benchmarks/nodule_sizes.py small=out/sizes_small node21=out/sizes_node21 --figure docs/images/nodule_sizes.png

Each ``label=folder`` is a dataset written by ``diffusionxray generate`` (e.g. ``--size-preset small`` and the default).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def dataset_sizes(root: Path) -> dict[str, np.ndarray]:
    """Box sides at 1024² (all / non-faint), diameters and faint flags of a generated dataset's labels."""
    coco = json.loads((root / "annotations" / "coco.json").read_text())
    config = json.loads((root / "config.json").read_text())
    l_max = config["attenuation"]["l_max"]
    # The pixels are L / l_max only without the acquisition physics and the clinical display.
    linear = config.get("physics", {}).get("mode", "simple") == "simple" and config.get("display", {}).get(
        "mode", "raw"
    ) == "raw"
    images = {im["id"]: im for im in coco["images"]}
    side, diam, faint, grey8, grey_hi = [], [], [], [], []
    for ann in coco["annotations"]:
        image = images[ann["image_id"]]
        w, h = ann["bbox"][2:]
        side.append(np.sqrt(w * h) * 1024.0 / image["width"])
        diam.append(ann["attributes"]["diameter_mm"])
        faint.append(bool(ann["attributes"]["faint"]))
        # Mean nodule signal in grey levels: in the 8-bit detector image (its lung-field window) and in the 16-bit
        # file read by an 8-bit loader that keeps the high byte (OpenCV's default imread).
        signal = ann["attributes"]["mean_delta_l"] * 65535.0 / l_max
        window = image["attributes"].get("detector_window")
        grey8.append(signal / (window["hi"] - window["lo"]) * 255.0 if window and linear else np.nan)
        grey_hi.append(signal / 256.0 if linear else np.nan)
    return {"side": np.array(side), "diameter": np.array(diam), "faint": np.array(faint),
            "grey8": np.array(grey8), "grey_hi": np.array(grey_hi)}  # fmt: skip


def image_contrast(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Non-faint nodules' contrast read from the files (image − nodule-free twin over the footprint), grey levels:
    the 8-bit detector images through PIL ``convert("L")``, and the 16-bit images through OpenCV's default
    ``imread`` (8 bits: the high byte). Needs a dataset written with its nodule-free twins."""
    import cv2
    from PIL import Image
    from pycocotools import mask as mask_utils

    coco = json.loads((root / "annotations" / "coco.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    det, high = [], []
    for ann in coco["annotations"]:
        if ann["attributes"]["faint"]:
            continue
        im = images[ann["image_id"]]
        attrs = im["attributes"]
        if "detector_nodule_free_file" not in attrs:
            continue
        fp = mask_utils.decode(ann["segmentation"]).astype(bool)
        a = np.asarray(Image.open(root / attrs["detector_file"]).convert("L"), dtype=np.float64)
        b = np.asarray(Image.open(root / attrs["detector_nodule_free_file"]).convert("L"), dtype=np.float64)
        det.append((a[fp] - b[fp]).mean())
        a = cv2.imread(str(root / im["file_name"])).astype(np.float64)[..., 0]
        b = cv2.imread(str(root / attrs["nodule_free_file"])).astype(np.float64)[..., 0]
        high.append((a[fp] - b[fp]).mean())
    return np.array(det), np.array(high)


def nih_nodule_sides(path: Path) -> np.ndarray:
    """sqrt(w h) of the NIH ChestX-ray8 "Nodule" boxes (1024² pixel coordinates)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh)][1:]
    return np.array([np.sqrt(float(r[4]) * float(r[5])) for r in rows if r[1] == "Nodule"])


def luna_diameters(path: Path) -> np.ndarray:
    """Diameters (mm) of the LUNA16 nodule patches."""
    with open(path, newline="") as fh:
        return np.array([float(r["diameter_mm"]) for r in csv.DictReader(fh)])


def summary(values: np.ndarray) -> str:
    """median [5th–95th percentile] (n)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "– (0)"
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return f"{p50:.1f} [{p5:.1f}–{p95:.1f}] (n={values.size})"


def main() -> None:
    """Print a markdown table and draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", help="label=folder pairs")
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    data = {}
    for item in args.datasets:
        label, _, folder = item.partition("=")
        data[label] = dataset_sizes(Path(folder))
    nih = nih_nodule_sides(SHARED / "reference" / "BBox_List_2017.csv")
    luna = luna_diameters(SHARED / "ct" / "luna16-nodule-patches" / "patches.csv")
    print("| set | box side px @1024² (all) | box side, non-faint | diameter mm | faint share |"
          " non-faint contrast, grey levels: 8-bit detector image / 16-bit high byte |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for label, d in data.items():
        vis = ~d["faint"]
        print(
            f"| {label} | {summary(d['side'])} | {summary(d['side'][vis])} | {summary(d['diameter'])} | "
            f"{d['faint'].mean():.0%} | {summary(d['grey8'][vis])} / {summary(d['grey_hi'][vis])} |"
        )
    for label, folder in (item.partition("=")[::2] for item in args.datasets):
        det, high = image_contrast(Path(folder))
        if det.size:
            print(f"| {label}, read from the files | | | | | {summary(det)} / {summary(high)} |")
    print(f"| NIH ChestX-ray8 Nodule boxes | {summary(nih)} | | | | |")
    print(f"| LUNA16 patches (diameter) | | | {summary(luna)} | | |")
    if args.figure is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 160, 33)
    ax1.hist(nih, bins=bins, density=True, alpha=0.45, color="k", label=f"NIH ChestX-ray8 nodules (n={nih.size})")
    for label, d in data.items():
        ax1.hist(d["side"], bins=bins, density=True, histtype="step", lw=2, label=f"{label} (n={d['side'].size})")
    ax1.set_xlabel("box side sqrt(w·h), px at 1024²")
    ax1.set_ylabel("density")
    ax1.legend(fontsize=8)
    bins = np.linspace(0, 48, 25)
    ax2.hist(luna, bins=bins, density=True, alpha=0.45, color="k", label=f"LUNA16 patches (n={luna.size})")
    for label, d in data.items():
        ax2.hist(d["diameter"], bins=bins, density=True, histtype="step", lw=2, label=label)
    ax2.axvspan(6, 30, color="g", alpha=0.08, label="NODE21 range 6–30 mm")
    ax2.set_xlabel("nodule diameter, mm")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)


if __name__ == "__main__":
    main()
