"""Shared harness of the restorer benchmarks (benchmarks/restorer_*.py): run record, reports, held-out data.

Every restorer benchmark writes ``<out>/<name>.json`` (numbers + the run record: date, machine, threads, device,
commit, load average) and ``<out>/<name>.md`` (the Markdown table for BENCHMARKS.md), and prints the table. Held-out
data only: real CXRs of held-out patients (``restoration.splits``), pairs folders whose sources are held out, and
enhanced ``generate`` runs made with a seed the training DRR set did not use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
NIH_DIR = SHARED / "cxr" / "nih-chestxray14" / "images"


# ------------------------------------------------------------------------------------------ run record


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """Short commit of the checkout being measured (+ "-dirty" with uncommitted changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_record(device: str, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Who/where/when of a measurement: date (UTC), machine, CPU threads, device, versions, commit, load."""
    import diffusers

    rec: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(command if command is not None else ["python", *sys.argv]),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()})",
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    if device.startswith("cuda"):
        rec["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return rec


def record_line(rec: dict[str, Any]) -> str:
    """One Markdown line naming machine, threads, device, date and commit."""
    gpu = f", GPU {rec['gpu']}" if "gpu" in rec else ""
    load = rec["load_average_1min_at_start"]
    shared = " (above the thread count: other work shared the machine)" if load > rec["torch_threads"] + 0.5 else ""
    return (
        f"*{rec['date_utc']} UTC, commit {rec['commit']}, {rec['machine']}, {rec['memory_gib']} GiB RAM{gpu}; "
        f"device {rec['device']}, {rec['torch_threads']} torch threads; torch {rec['torch']}, diffusers "
        f"{rec['diffusers']}; 1-min load average at start {load}{shared}.*"
    )


# ------------------------------------------------------------------------------------------ arguments / output


def add_common_args(ap: argparse.ArgumentParser, out_default: str) -> None:
    """--out, --device, --threads, --seed, --no-progress (every restorer benchmark)."""
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / out_default, help="output folder")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0, help="sampler noise seed")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def setup(args: argparse.Namespace) -> str:
    """Apply --threads and resolve --device ("auto" -> cuda when available); returns the device string."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = str(args.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA device here (use --device cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise SystemExit(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    return device


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one char per column (l or r; default: first left, others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``out/name.json`` and ``out/name.md`` atomically, print the Markdown; returns both paths."""
    from data.atomic import atomic_write_json, atomic_write_text

    js = atomic_write_json(Path(out) / f"{name}.json", payload)
    md = atomic_write_text(Path(out) / f"{name}.md", markdown.rstrip() + "\n")
    print(markdown)
    print(f"wrote {js} and {md}", file=sys.stderr)
    return js, md


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def held_out_real(folder: Path) -> list[Path]:
    """The held-out patients' real CXRs of a folder (``restoration.splits.split_real``), sorted."""
    from restoration.preprocess import list_images
    from restoration.splits import split_real

    if not Path(folder).is_dir():
        raise SystemExit(f"{folder}: no such folder of real CXRs")
    held = split_real(list_images(folder))[1]
    if not held:
        raise SystemExit(f"{folder}: no held-out images (the split holds out about a third of the patients)")
    return held


# ------------------------------------------------------------------------------------------ held-out pairs


def packaged_model() -> Path | None:
    """The packaged DDPM-HQ folder (``restoration.pretrained.packaged_model_dir``), or None when absent."""
    try:
        from restoration.pretrained import packaged_model_dir
    except ImportError:
        return None
    return packaged_model_dir()


def check_held_out(pairs_dir: Path, names: list[str]) -> None:
    """Stop when any pair's HQ source belongs to a training patient (per ``pairs.json``)."""
    from restoration.pairs import pair_records
    from restoration.splits import is_held_out, patient_of

    records = pair_records(pairs_dir)
    if not records:
        raise SystemExit(f"{pairs_dir}: no pairs.json (not a pairs folder made by make-pairs)")
    for name in names:
        rec = records.get(name)
        if rec is None:
            raise SystemExit(f"{pairs_dir}: {name} is not listed in pairs.json")
        patient = str(rec.get("patient") or patient_of(rec["hq_source"]))
        if not is_held_out(patient):
            raise SystemExit(f"{pairs_dir}: {name} comes from a training patient; make pairs from the held-out split")


def pairs_of(folder: Path, n: int) -> tuple[list[Path], list[Path]]:
    """(HQ, LQ) paths of the first ``n`` pairs (by name) of a held-out pairs folder (training patients refused)."""
    from restoration.preprocess import list_images

    hq = {p.name: p for p in list_images(Path(folder) / "hq")}
    lq = {p.name: p for p in list_images(Path(folder) / "lq")}
    names = sorted(set(hq) & set(lq))[:n]
    if not names:
        raise SystemExit(f"{folder}: no hq/NAME.png with a matching lq/NAME.png")
    check_held_out(Path(folder), names)
    return [hq[x] for x in names], [lq[x] for x in names]


# ------------------------------------------------------------------------------------------ UNet clock


@dataclass
class UNetClock:
    """Counts and times the UNet forward passes of a restorer (forward hooks; GPU work synchronised)."""

    calls: int = 0
    seconds: float = 0.0
    per_call: list[float] = field(default_factory=list)
    _t0: float = 0.0

    def attach(self, unet: torch.nn.Module, device: str) -> None:
        """Hook ``unet`` so every forward pass is counted and timed."""

        def sync() -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize(torch.device(device))

        def pre(*_: Any) -> None:
            sync()
            self._t0 = time.perf_counter()

        def post(*_: Any) -> None:
            sync()
            dt_ = time.perf_counter() - self._t0
            self.calls += 1
            self.seconds += dt_
            self.per_call.append(dt_)

        unet.register_forward_pre_hook(pre)
        unet.register_forward_hook(post)

    def reset(self) -> None:
        """Zero the counters."""
        self.calls, self.seconds, self.per_call = 0, 0.0, []


# ------------------------------------------------------------------------------------------ enhanced DRR datasets


def add_dataset_args(ap: argparse.ArgumentParser) -> None:
    """Options naming enhanced ``generate`` outputs, or how to make them (shared by nodules, realism, figure)."""
    ap.add_argument("--dataset", type=Path, action="append", default=None,
                    help="an enhanced generate output (repeatable); default: made here from --ct")  # fmt: skip
    ap.add_argument("--ct", action="append", default=None,
                    help="CT to render (repeatable; 'example' = the embedded CT, the default; PATH#N picks DICOM "
                    "series N of a folder with several, generate --series-uid N)")  # fmt: skip
    ap.add_argument("--view", default=None, help="generate --view (default: generate's, PA)")
    ap.add_argument("--images-per-ct", "-n", type=int, default=4, help="images per CT when datasets are made here")
    ap.add_argument("--drr-seed", type=int, default=9001,
                    help="generate seed: must differ from the training DRR set's, so poses were not trained on")  # fmt: skip
    ap.add_argument("--size", type=int, default=512, help="DRR side rendered (the model's LQ side)")
    ap.add_argument("--model", type=Path, default=None, help="DDPM-HQ folder (default: the packaged model)")
    ap.add_argument("--datasets-dir", type=Path, default=REPO / "runs" / "bench" / "restorer_drrs",
                    help="where datasets made here go (reused by the other scripts: generate resumes)")  # fmt: skip


def ensure_datasets(args: argparse.Namespace, device: str) -> list[Path]:
    """The ``--dataset`` folders, or one enhanced generate run per ``--ct`` (resumed when already there)."""
    if args.dataset:
        for d in args.dataset:
            if not (Path(d) / "annotations" / "coco.json").is_file():
                raise SystemExit(f"--dataset {d}: no annotations/coco.json (not a generate output)")
        return [Path(d) for d in args.dataset]
    if args.images_per_ct < 1:
        raise SystemExit(f"--images-per-ct must be >= 1, got {args.images_per_ct}")
    out = []
    for spec in args.ct or ["example"]:
        ct, _, series = str(spec).partition("#")
        name = "example" if ct == "example" else "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(ct).name)
        view = f"_{args.view.lower()}" if args.view else ""
        model = "packaged" if args.model is None else Path(args.model).name  # another model: another folder
        tag = f"{name}_s{series}" if series else name
        dest = Path(args.datasets_dir) / f"{tag}{view}_seed{args.drr_seed}_n{args.images_per_ct}_{args.size}_{model}"
        cmd = [sys.executable, "-m", "pipeline.cli", "generate", *([] if ct == "example" else [ct]),
               *(["--series-uid", series] if series else []), *(["--view", args.view] if args.view else []),
               "--out", str(dest), "-n", str(args.images_per_ct), "--seed", str(args.drr_seed),
               "--size", str(args.size), "--device", device, *([] if args.progress else ["--no-progress"]),
               *(["--enhance", str(args.model)] if args.model is not None else [])]  # fmt: skip
        print("$ " + " ".join(cmd), file=sys.stderr)
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if subprocess.run(cmd, cwd=REPO, env=env).returncode != 0:
            raise SystemExit(f"generate failed for CT {ct} (see its message above)")
        out.append(dest)
    return out


def enhanced_records(dataset: Path) -> list[Any]:
    """COCO records of a dataset, refusing one that was not enhanced (no raw DRRs beside the images)."""
    from data.coco import read_coco

    recs = read_coco(Path(dataset) / "annotations" / "coco.json")
    if not recs or not all(r.attributes.get("drr_file") for r in recs):
        raise SystemExit(f"{dataset}: not enhanced (no images_drr/): run generate with a restorer (the default when "
                         "the packaged model is present, or --enhance MODEL)")  # fmt: skip
    return recs
