"""Run configuration for ``generate``: one dataclass per component, saved beside the dataset it produced."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ct_projection.attenuation import AttenuationModel
from ct_projection.display import DisplayConfig
from ct_projection.geometry import ProjectionGeometry
from ct_projection.labels import LabelConfig
from ct_projection.nodules import NoduleConfig
from ct_projection.physics.acquisition import PhysicsConfig
from ct_projection.renderer import DEFAULT_RENDERER, RENDERERS
from data.settings import SettingsError, field_names, load_settings, read_settings_file, settings_dict
from data.yolo import FAINT_LABELS
from pipeline.enhancer import EnhanceConfig

# Fixed defaults, whatever the machine: the same command and seed make the same dataset on a CPU and a GPU.
DEFAULT_SIZE_PX = 512
DEFAULT_IMAGES_PER_CT = 6
# What the hint suggests when a GPU is available and the defaults were not overridden.
GPU_SUGGESTED_SIZE_PX = 1024
GPU_SUGGESTED_IMAGES_PER_CT = 16
MAX_IMAGES_PER_CT = 100_000
OUT_INNER_BYTES = 256  # longest path a dataset writes below its folder (sub-folder + image name)
ALIAS_MAX = 64  # DICOM LO/PN limit: the alias becomes PatientName/PatientID of --dicom output
_ALIAS_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
RUN_TAG_MAX = 24


def sanitize_alias(alias: str) -> str:
    """A user alias reduced to ``[A-Za-z0-9._-]`` (other runs → ``_``), trimmed of edge punctuation, ≤ 64 chars."""
    # Aliases end up in JSON and DICOM (never in a path), but a clean token is safe in all of them.
    clean = _ALIAS_BAD.sub("_", alias.strip())
    clean = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", "_", clean))  # no ".." anywhere, even if never a path
    clean = clean.strip("._-")[:ALIAS_MAX].strip("._-")
    if not clean:
        raise ValueError(f"alias {alias!r} is empty after sanitising: use letters, digits, '.', '_' or '-'")
    return clean


def read_alias_csv(path: str | Path) -> dict[str, str]:
    """``sha256,alias`` rows (optional header ``sha256,alias``) → {sha256: sanitised alias}; one-line ValueError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read alias CSV: {getattr(err, 'strerror', None) or err}") from err
    aliases: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (lineno == 1 and fields[0].lower() == "sha256"):
            continue
        if len(fields) != 2 or not _SHA256.fullmatch(fields[0]):
            raise ValueError(
                f"{path}: line {lineno}: expected 'sha256,alias' with the CT's 64-hex content sha256 "
                "(as in dataset.json sources)"
            )
        try:
            aliases[fields[0].lower()] = sanitize_alias(fields[1])
        except ValueError as err:
            raise ValueError(f"{path}: line {lineno}: {err}") from err
    return aliases


def series_selector_digest(selector: str) -> str:
    """What the run settings keep of a ``--series-uid`` value: a series number as is, a UID only as a hash."""
    # A SeriesInstanceUID identifies the study (PS3.15 Annex E), so only its hash reaches config.json/dataset.json.
    if selector.isdigit():
        return selector
    return "sha256:" + hashlib.sha256(selector.encode("utf-8")).hexdigest()[:16]


@dataclass
class GenerateConfig:
    """Everything that determines the generated dataset (together with the input CTs).

    Args:
        images_per_ct: radiographs rendered per CT (each with fresh nodules and pose jitter).
        seed: base seed; sample k of CT c draws from ``SeedSequence(seed, spawn_key=(ct_key(c), k))``.
        geometry: acquisition geometry.
        nodules: nodule sampling settings.
        labels: footprint/visibility settings.
        attenuation: HU → μ (``simple`` physics) and the 16-bit scale of line-integral images (``l_max``).
        physics: how the radiograph is acquired: ``full`` (spectrum, water/bone materials, scatter, noise, detector
            blur) or ``simple`` (monoenergetic, noise-free line integral).
        display: presentation of ``images/``: ``clinical`` (multi-scale processing and tone curve; the physical
            image is kept in ``images_physical/``) or ``raw`` (the physical image itself).
        write_nodule_free: also write the nodule-free DRR of the same pose.
        enhance: restore each DRR with a trained DDPM-HQ (2x) before writing; None keeps raw DRRs.
        dicom: also write each image as a DICOM Secondary Capture.
        series_uid: DICOM series to use when a folder holds several (SeriesInstanceUID or SeriesNumber).
        alias: user alias of the source CT of a single-CT run (sanitised; DICOM PatientName, manifest, dataset.json).
        aliases: per-CT aliases by content sha256 (from ``--alias-csv``); they win over ``alias``.
        run_tag: prefix of every file name (letters, digits, . _ -); default: derived from all other settings
            (seed included), so two runs with different settings or seeds never write the same names and can be
            merged (``diffusionxray merge``).
        faint_labels: ``drop`` (default: nodules flagged faint get no YOLO box and are COCO ignore regions in the
            detector files) or ``keep``; every nodule stays in coco.json and metadata.csv with its ``faint`` flag.
        negatives: list each sample's nodule-free twin as a negative image (no boxes) in the detector files.
        val_fraction: share of CTs (or of images, for a one-CT run) held out as the validation split.
        renderer: DRR backend, ``diffdrr`` (exact Siddon, the reference) or ``nanodrr`` (trilinear ray marching).
        nodule_library: folder of real CT nodule patches (``<uid>_dcm_<k>.mha`` + ``<uid>_seg_<k>.mha``); like the
            input CTs its path is not part of the saved settings, its content is (``nodule_library_sha256``).
        nodule_library_sha256: content digest of the library (set from ``nodule_library``; a config that names one
            needs the same library given again).
        library_fraction: share of nodules taken from the library (the rest are parametric).
    """

    images_per_ct: Annotated[int, Field(ge=1, le=MAX_IMAGES_PER_CT)] = DEFAULT_IMAGES_PER_CT
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0  # SeedSequence entropy is non-negative
    geometry: ProjectionGeometry = field(default_factory=lambda: ProjectionGeometry(size_px=DEFAULT_SIZE_PX))
    nodules: NoduleConfig = field(default_factory=NoduleConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    attenuation: AttenuationModel = field(default_factory=AttenuationModel)
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    write_nodule_free: bool = True
    enhance: EnhanceConfig | None = None
    dicom: bool = False
    series_uid: str | None = None
    alias: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    run_tag: str | None = None
    faint_labels: str = "drop"
    negatives: bool = False
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    renderer: str = DEFAULT_RENDERER
    nodule_library: str | None = None
    nodule_library_sha256: str | None = None
    library_fraction: Annotated[float, Field(ge=0, le=1)] = 1.0

    def __post_init__(self) -> None:
        if self.nodule_library is not None:
            from ct_projection.nodule_library import library_digest

            digest = library_digest(self.nodule_library)  # NoduleLibraryError (a ValueError) names the folder
            if self.nodule_library_sha256 not in (None, digest):
                raise ValueError(
                    f"--nodule-library: {self.nodule_library} is not the library these settings were made with "
                    f"(sha256 {self.nodule_library_sha256[:12]}…, this one {digest[:12]}…)"
                )
            self.nodule_library_sha256 = digest
        elif self.nodule_library_sha256 is not None:
            raise ValueError(
                "the settings name a nodule library (nodule_library_sha256): give its folder with --nodule-library"
            )
        if not 0.0 <= float(self.library_fraction) <= 1.0:
            raise ValueError(f"--library-fraction: must be in [0, 1], got {self.library_fraction}")
        if self.images_per_ct < 1:
            raise ValueError(f"images_per_ct must be >= 1, got {self.images_per_ct}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"--renderer: unknown value {self.renderer!r}: expected one of {', '.join(RENDERERS)}")
        if self.faint_labels not in FAINT_LABELS:
            raise ValueError(f"--faint-labels: unknown value {self.faint_labels!r}: expected one of {', '.join(FAINT_LABELS)}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ValueError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")
        self.val_fraction = float(self.val_fraction)
        if self.run_tag is not None:
            try:
                self.run_tag = sanitize_alias(self.run_tag)[:RUN_TAG_MAX]
            except ValueError as err:
                raise ValueError(f"--run-tag: {err}") from None
        if self.alias is not None:
            self.alias = sanitize_alias(self.alias)
        self.aliases = {str(k).lower(): sanitize_alias(v) for k, v in sorted(self.aliases.items())}

    def alias_for(self, checksum: str) -> str | None:
        """The sanitised alias of the CT with this content sha256, if the user gave one."""
        return self.aliases.get(checksum.lower(), self.alias)

    def tag(self) -> str:
        """The file-name prefix: ``run_tag``, or ``r`` + 7 hex of the other settings' hash."""
        if self.run_tag is not None:
            return self.run_tag
        settings = {k: v for k, v in self.to_dict().items() if k != "run_tag"}
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        return "r" + hashlib.sha256(blob).hexdigest()[:7]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a series UID appears only as a hash)."""
        out = settings_dict(self)
        out["series_uid"] = None if self.series_uid is None else series_selector_digest(self.series_uid)
        out.pop("nodule_library")  # a local path, like the input CTs' (its content is nodule_library_sha256)
        if self.nodule_library_sha256 is None:
            out.pop("nodule_library_sha256")  # runs without a library keep their earlier fingerprints
            out.pop("library_fraction")
        return out

    def fingerprint(self) -> str:
        """Short hash of the settings (a resumed run must match it)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def read_generate_config_file(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """The GenerateConfig fields of a JSON run config (e.g. a dataset's config.json) and one-line notes on ignored ones.

    Every field of ``GenerateConfig.to_dict`` is accepted; a ``series_uid`` saved only as a hash cannot select a
    series again and is ignored (with a note). Unknown fields and wrong types are a one-line ``SettingsError``.
    """
    data = read_settings_file(path)
    known = field_names(GenerateConfig)
    for key in data:
        if key not in known:
            raise SettingsError(f"{path}: unknown field {key!r}: expected some of {', '.join(known)}", key)
    notes: list[str] = []
    selector = data.get("series_uid")
    if isinstance(selector, str) and selector.startswith("sha256:"):
        del data["series_uid"]
        notes.append(f"{path}: series_uid is saved only as a hash and is ignored (give --series-uid to select a series)")
    load_settings(GenerateConfig, data, source=str(path))  # the file alone must be valid: its errors name the file
    return data, notes


def pick_enhancement(
    enhance: Path | None, no_enhance: bool, file_data: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """The ``enhance`` settings of a ``generate`` run, and a one-line note when the default had to be dropped.

    ``--no-enhance`` wins, then ``--enhance PATH``, then the ``enhance`` section of ``--config`` (null: none), then
    the packaged model when this install has one. Pops ``enhance`` from ``file_data``: what the file says is in the
    returned dict (its model digest only while it names the same model; the input size is re-read on load).
    """
    from pipeline.enhancer import PACKAGED_MODEL, packaged_model

    if no_enhance and enhance is not None:
        raise SettingsError("--enhance and --no-enhance exclude each other", "enhance")
    in_file = "enhance" in file_data
    saved = file_data.pop("enhance", None)
    if no_enhance:
        return None, None
    if enhance is not None:
        return {"model_dir": str(enhance)}, None  # a new model: the file's digest and sizes do not apply
    if in_file:
        if not isinstance(saved, dict):
            return None, None  # the file's run wrote raw DRRs (or the field is checked as wrong below)
        return {k: saved[k] for k in ("model_dir", "steps", "scheduler", "strength", "weights_sha256") if k in saved}, None
    if packaged_model() is None:
        note = ("no packaged restoration model is the default in this install: writing raw DRRs (--enhance PATH "
                "restores them with a trained DDPM-HQ, e.g. the opt-in one shipped in restoration/pretrained/"
                "ddpm-hq-v0; --no-enhance silences this note)")  # fmt: skip
        return None, note
    return {"model_dir": PACKAGED_MODEL}, None


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied section by section (nested dicts merged, None values skipped)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def check_out_path(out: Path) -> None:
    """Refuse an output folder path the file system cannot hold (one line), before anything is written."""
    path = Path(os.path.abspath(out))
    anchor = next((p for p in path.parents if os.path.isdir(p)), Path("/"))  # os.path: no error on long names
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise SettingsError(
                f"--out: folder name {part[:40]!r}... is {len(os.fsencode(part))} bytes; "
                f"this file system allows at most {name_max}",
                "out",
            )
    # The dataset's own files add up to ~OUT_INNER_BYTES below the folder (images_drr_nodule_free/<name>.png).
    if len(os.fsencode(str(path))) + OUT_INNER_BYTES > path_max:
        raise SettingsError(
            f"--out: path is {len(os.fsencode(str(path)))} bytes; with the dataset's file names it must stay "
            f"under {path_max - OUT_INNER_BYTES}",
            "out",
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise SettingsError(f"--out {out}: exists and is not a folder", "out")
