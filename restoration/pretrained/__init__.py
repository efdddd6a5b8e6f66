"""The DDPM-HQ model shipped inside the package (``restoration/pretrained/ddpm-hq/``), loaded with no network access.

The folder is a ``DDPMHQPipeline`` folder (``model_index.json``, ``unet/``, ``scheduler/``) with a model card
(``README.md``). It is package data (pyproject), so wheels, sdists and editable installs carry it. When it is
absent (a checkout before the model was trained) callers get None and carry on without enhancement.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_MODEL_NAME = "ddpm-hq"
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors",)


def packaged_model_dir(root: str | Path | None = None) -> Path | None:
    """``restoration/pretrained/ddpm-hq`` when it holds a pipeline with weights, else None.

    Only presence is checked here; ``restoration.pipeline_ddpm_hq.load_pipeline`` refuses a corrupt folder with
    one line.

    Args:
        root: where to look instead of this package folder (tests).
    """
    folder = Path(root or Path(__file__).resolve().parent) / PACKAGED_MODEL_NAME
    if not (folder / "model_index.json").is_file():
        return None
    if not all((folder / w).is_file() and (folder / w).stat().st_size > 0 for w in WEIGHTS):
        return None
    return folder
