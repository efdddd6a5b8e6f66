"""Scale-out of ``generate`` on Ray: CTs are distributed over a pool of actors (one per GPU, or per CPU).

Each actor is created once and keeps its heavy state (torch, DiffDRR and, when enabled, the restoration model)
loaded across CTs; it renders a CT's missing samples and writes their images straight into the output folder
(which must be on storage shared by the nodes). The driver alone appends the manifest (one writer, no interleaved
lines, one entry per (CT, sample) even when two inputs are the same CT) and builds the dataset-level files from it,
sorted by input order and sample index, so a Ray run is byte-identical to the serial run with the same seed: every
sample's randomness comes from ``SeedSequence(seed, spawn_key=(ct_key, k))``, never from which worker ran it or when.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.atomic import DatasetWriteError
from pipeline.config import GenerateConfig
from pipeline.generate import (
    CTOutcome,
    GenerateResult,
    describe_failure,
    finalize,
    note_outcome,
    process_ct,
)
from pipeline.run_folder import RunRecorder, open_run


class GenerateWorker:
    """Ray actor body: processes whole CTs with the serial code path, returning manifest entries to the driver."""

    def __init__(self, config: GenerateConfig, out_dir: str, device: str | None, model_path: str | None = None) -> None:
        import torch

        from data.confine import guard

        torch.set_num_threads(1)  # one CPU per actor: Ray schedules the parallelism
        guard(out_dir)  # the driver holds the folder's lock; this actor's writes stay inside the folder
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.enhancer = None
        if config.enhance is not None:  # the restoration model is loaded once per actor, not per CT
            from pipeline.enhancer import Enhancer

            # The driver's resolved folder (the same install, or shared storage); the digest check catches a
            # different model there.
            self.enhancer = Enhancer(config.enhance, device or "cpu", None if model_path is None else Path(model_path))

    def process(
        self, index: int, path: str, done: frozenset[tuple[str, int]]
    ) -> tuple[int, CTOutcome, list[dict[str, Any]]]:
        """Render one CT's missing samples; returns (input index, outcome, manifest entries)."""
        entries: list[dict[str, Any]] = []
        outcome = process_ct(
            path, self.config, self.out_dir, done, entries.append, self.device, False, self.enhancer
        )
        return index, outcome, entries


def pool_size(requested: int | None, gpus: int, cpus: int, n_inputs: int) -> int:
    """Actors to start: the request (default one per GPU, else per CPU), never more than the cluster can place."""
    # Each actor holds a CPU (and a GPU when there are GPUs); an actor that cannot be placed waits forever, and
    # ActorPool would wait on it: more actors than CPUs/GPUs is Ray's known hang.
    limit = min(cpus, gpus) if gpus else cpus
    return max(1, min(requested or (gpus or cpus), limit, n_inputs or 1))


def generate_ray(
    inputs: list[str],
    out_dir: Path,
    config: GenerateConfig,
    device: str | None = None,
    progress: bool = True,
    restart: bool = False,
    address: str | None = None,
    num_workers: int | None = None,
    enhance_dir: Path | None = None,
) -> GenerateResult:
    """``generate`` on Ray; same outputs as the serial backend.

    Args:
        address: Ray cluster address (``auto`` for an existing cluster); None starts a local one.
        num_workers: actors in the pool (default: one per GPU, else one per CPU of the cluster; capped by both).
        enhance_dir: the folder ``config.enhance`` resolved to in the driver (default: each actor resolves it).

    A CT whose actor dies (e.g. killed for memory) is reported in one line like any failed CT and the actor replaced.
    """
    try:
        import ray
    except ImportError as err:  # optional extra
        raise RuntimeError('the Ray backend needs Ray: pip install "diffusionxray[ray]"') from err

    out_dir = Path(out_dir).resolve()
    result = GenerateResult(out_dir)
    with open_run(inputs, out_dir, config, restart) as recorder:  # the driver holds the folder's lock
        outcomes = _run_pool(
            ray, inputs, out_dir, config, device, progress, address, num_workers, recorder, enhance_dir
        )
        sources: list[dict[str, Any]] = []
        firsts: dict[str, str] = {}
        for index, path in enumerate(inputs):  # reported in input order, like the serial run
            note_outcome(result, sources, firsts, path, outcomes[index])
        result.records = finalize(out_dir, config, sources, result.failed, recorder.entries)
    return result


def _run_pool(
    ray: Any,
    inputs: list[str],
    out_dir: Path,
    config: GenerateConfig,
    device: str | None,
    progress: bool,
    address: str | None,
    num_workers: int | None,
    recorder: RunRecorder,
    enhance_dir: Path | None = None,
) -> dict[int, CTOutcome]:
    """Process every input on an actor pool, recording manifest entries as they arrive; outcomes by input index.

    The actors are killed before this returns or raises (e.g. Ctrl-C), so none writes after the lock is released.
    """
    from ray.exceptions import RayActorError, RayTaskError
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(int(resources.get("CPU", 1)), 1)
    workers = pool_size(num_workers, gpus, cpus, len(inputs))
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(GenerateWorker)
    worker_device = "cuda" if gpus else "cpu" if device in (None, "auto") else device

    def new_actor() -> Any:
        return actor_cls.remote(config, str(out_dir), worker_device, None if enhance_dir is None else str(enhance_dir))

    idle = [new_actor() for _ in range(workers)]
    pending: dict[Any, tuple[int, Any]] = {}
    outcomes: dict[int, CTOutcome] = {}
    try:
        done_ref = ray.put(frozenset(recorder.done))  # shipped to the object store once, not with every task
        queue = list(enumerate(inputs))
        bar = tqdm(total=len(inputs), disable=not progress, unit="CT", desc="ray")
        while queue or pending:
            while queue and idle:
                index, path = queue.pop(0)
                actor = idle.pop()
                pending[actor.process.remote(index, path, done_ref)] = (index, actor)
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ready)
            entries: list[dict[str, Any]] = []
            try:
                _, outcome, entries = ray.get(ready)
            except RayActorError as err:  # the worker process died: this CT fails, a fresh actor takes its place
                outcome = CTOutcome(
                    error=f"{inputs[index]}: {type(err).__name__}: the Ray worker died (out of memory?)"
                )
                _kill(ray, [actor])
                actor = new_actor()
            except RayTaskError as err:
                if isinstance(err.cause, DatasetWriteError):  # output folder unusable: end the run with its line
                    raise err.cause from None
                outcome = CTOutcome(error=describe_failure(inputs[index], err.cause))
            idle.append(actor)
            outcomes[index] = outcome
            for entry in entries:  # the recorder drops keys already recorded (a copy of a CT on another actor)
                recorder.append(entry)
            bar.update(1)
        bar.close()
    finally:
        _kill(ray, idle + [actor for _, actor in pending.values()])
    return outcomes


def _kill(ray: Any, actors: list[Any]) -> None:
    """Kill actors now (already gone is fine)."""
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass
