"""Scale-out of ``generate`` on Ray: CTs are distributed over a pool of actors (one per GPU, or per CPU).

Each actor is created once and keeps its heavy state (torch, DiffDRR and, when enabled, the restoration model)
loaded across CTs; it renders a CT's missing samples and writes their images straight into the output folder
(which must be on storage shared by the nodes). The driver alone appends the manifest (one writer, no interleaved
lines) and builds the dataset-level files from it, sorted by input order and sample index, so a Ray run is
byte-identical to the serial run with the same seed: every sample's randomness comes from
``SeedSequence(seed, spawn_key=(ct_key, k))``, never from which worker ran it or when.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.config import GenerateConfig
from pipeline.generate import (
    MANIFEST,
    CTOutcome,
    GenerateResult,
    check_run_settings,
    completed_entries,
    finalize,
    process_ct,
)


class GenerateWorker:
    """Ray actor body: processes whole CTs with the serial code path, returning manifest entries to the driver."""

    def __init__(self, config: GenerateConfig, out_dir: str, device: str | None, dicom: bool) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor: Ray schedules the parallelism
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.dicom = dicom
        self.enhancer = None
        if config.enhance is not None:  # the restoration model is loaded once per actor, not per CT
            from pipeline.enhancer import Enhancer

            self.enhancer = Enhancer(config.enhance, device or "cpu")

    def process(self, index: int, path: str, done: set[tuple[str, int]], series_uid: str | None) -> tuple:
        """Render one CT's missing samples; returns (input index, outcome, manifest entries)."""
        entries: list[dict[str, Any]] = []
        outcome = process_ct(
            path, self.config, self.out_dir, done, entries.append, self.device, series_uid, False, self.dicom,
            self.enhancer,
        )
        return index, outcome, entries


def generate_ray(
    inputs: list[str],
    out_dir: Path,
    config: GenerateConfig,
    device: str | None = None,
    series_uid: str | None = None,
    progress: bool = True,
    restart: bool = False,
    dicom: bool = False,
    address: str | None = None,
    num_workers: int | None = None,
) -> GenerateResult:
    """``generate`` on Ray; same outputs as the serial backend.

    Args:
        address: Ray cluster address (``auto`` for an existing cluster); None starts a local one.
        num_workers: actors in the pool (default: one per GPU, else one per CPU of the cluster).
    """
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as err:  # optional extra
        raise RuntimeError('the Ray backend needs Ray: pip install "diffusionxray[ray]"') from err
    from tqdm.auto import tqdm

    from data.manifest import Manifest

    out_dir = Path(out_dir).resolve()
    check_run_settings(out_dir, config, restart)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(int(resources.get("CPU", 1)), 1)
    # Never more actors than CPUs: Ray actors each hold a CPU and extra ones would wait forever (known hang).
    workers = max(1, min(num_workers or (gpus or cpus), cpus, len(inputs) or 1))
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(GenerateWorker)
    worker_device = "cuda" if gpus else "cpu" if device in (None, "auto") else device
    pool = ActorPool([actor_cls.remote(config, str(out_dir), worker_device, dicom) for _ in range(workers)])
    done = set(completed_entries(out_dir, config.fingerprint()))
    outcomes: dict[int, CTOutcome] = {}
    manifest: Manifest | None = None
    jobs = pool.map_unordered(lambda a, job: a.process.remote(job[0], job[1], done, series_uid), list(enumerate(inputs)))
    for index, outcome, entries in tqdm(jobs, total=len(inputs), disable=not progress, unit="CT", desc="ray"):
        outcomes[index] = outcome
        if entries:
            manifest = manifest or Manifest(out_dir / MANIFEST)
            for entry in entries:
                manifest.append(entry)
    result = GenerateResult(out_dir)
    sources: list[dict[str, Any]] = []
    for index in range(len(inputs)):
        outcome = outcomes[index]
        result.skipped_done += outcome.skipped_done
        if outcome.error is not None:
            print(f"error: {outcome.error}", file=sys.stderr)
            result.failed.append(outcome.error)
        elif all(src["sha256"] != outcome.source["sha256"] for src in sources):
            sources.append(outcome.source)
    result.records = finalize(out_dir, config, sources, result.failed)
    return result
