"""Crash safety: SIGKILL a real run part-way, resume, and compare with an uninterrupted run byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

pytestmark = pytest.mark.slow  # SIGKILL/resume runs in subprocesses (12 images each)

ARGS = ["--size", "96", "-n", "12", "--seed", "5", "--no-progress", "--device", "cpu", "--no-enhance"]
ROOT = Path(__file__).resolve().parents[1]


def digest(root: Path, skip: tuple[str, ...] = ("manifest.jsonl",)) -> dict[str, str]:
    """sha256 of every dataset file (the append-only manifest legitimately differs after a crash)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


# The CLI with its record image writer wrapped so the process SIGKILLs itself right after its N-th record image
# (argv[1]) is written, before that sample's manifest record: the "image present, record missing" crash.
KILL_AFTER_IMAGES = """
import os, signal, sys
from pipeline import publish
from pipeline.cli import app

limit, count = int(sys.argv[1]), [0]
i = next(i for i, w in enumerate(publish.WRITERS) if w.folder == "images")
inner = publish.WRITERS[i]

def kill_after(write):
    def wrapped(path):
        write(path)
        count[0] += 1
        if count[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped

class Killing:
    folder = inner.folder
    def __call__(self, sample, config):
        return [publish.Output(o.name, kill_after(o.write), o.attribute) for o in inner(sample, config)]

publish.WRITERS[i] = Killing()
sys.argv = ["diffusionxray", *sys.argv[2:]]
app()
"""


def run_cli(ct: Path, out: Path, kill_after_images: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    main = ["-m", "pipeline.cli"] if kill_after_images is None else ["-c", KILL_AFTER_IMAGES, str(kill_after_images)]
    cmd = [sys.executable, *main, "generate", str(ct), "--out", str(out), *ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def manifest_keys(out: Path) -> list[tuple[str, int]]:
    """(CT checksum, sample index) of every readable manifest entry, in file order."""
    from data.manifest import Manifest

    return [(e["ct_sha256"], e["sample_index"]) for e in Manifest(out / "manifest.jsonl").read(skip_bad=True)]


def assert_one_entry_per_sample(out: Path) -> None:
    """Exactly one manifest entry per (CT, sample) key, none missing, and no temp files left anywhere."""
    keys = manifest_keys(out)
    assert len(keys) == 12 and len(set(keys)) == 12, keys
    assert sorted(k[1] for k in keys) == list(range(12))
    from data.ownership import TOOL_FILES

    hidden = [p for p in out.rglob("*") if p.name.startswith(".") and p.relative_to(out).as_posix() not in TOOL_FILES]
    assert not list(out.rglob("*.tmp")) and not hidden, hidden


@pytest.fixture(scope="module")
def reference(chest_nifti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    proc = run_cli(chest_nifti, out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_sigkill_then_resume_is_byte_identical(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(chest_nifti), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = [json.loads(line) for line in manifest.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(partial) < 12
    assert not (out / "annotations" / "coco.json").exists()  # dataset files come only at the end

    resumed = run_cli(chest_nifti, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed:" in resumed.stderr
    assert digest(out) == digest(reference)
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    names = [im["file_name"] for im in coco["images"]]
    assert len(names) == 12 and len(set(names)) == 12
    assert_one_entry_per_sample(out)


def test_kill_between_image_and_record_then_resume(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    """SIGKILL right after an image is published but before its record; a leftover temp file is cleaned on resume."""
    out = tmp_path / "ds"
    killed = run_cli(chest_nifti, out, kill_after_images=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(manifest_keys(out)) == 2  # the third sample's image is there, its record is not
    assert len(list((out / "images").glob("*.png"))) == 3
    stale = out / "images" / ".x_0002.png.k3j9z0aq.tmp"  # what atomic_write_bytes leaves when killed mid-write
    stale.write_bytes(b"partial")
    resumed = run_cli(chest_nifti, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 finished images verified" in resumed.stderr and "removed 1 temp file(s)" in resumed.stderr
    assert digest(out) == digest(reference)
    assert_one_entry_per_sample(out)


def test_corrupt_manifest_line_is_a_missing_record(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    """A garbled line that is not the last: one warning line, no traceback, that sample redone, rest kept."""
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_bytes().split(b"\n")
    lines[4] = lines[4][: len(lines[4]) // 2] + b"\xff\x00garbage"
    manifest.write_bytes(b"\n".join(lines))
    result = run_cli(chest_nifti, out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: {manifest}: ignored unreadable records (line 5); their samples will be redone"]
    assert "11 finished images verified" in result.stderr
    assert digest(out) == digest(reference)
    assert_one_entry_per_sample(out)


def test_torn_or_missing_outputs_are_redone(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    images = sorted((out / "images").glob("*.png"))
    images[0].write_bytes(images[0].read_bytes()[:100])  # torn
    images[1].unlink()  # missing
    (out / "annotations" / "coco.json").unlink()
    result = run_cli(chest_nifti, out)
    assert result.returncode == 0, result.stderr
    assert "10 finished images verified" in result.stderr
    assert digest(out) == digest(reference)


def test_mixing_runs_with_other_settings_is_refused(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    before = digest(out, skip=())
    args = ["generate", str(chest_nifti), "--out", str(out), "--size", "64", "-n", "1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "different settings" in result.output and "--restart" in result.output
    assert digest(out, skip=()) == before  # nothing touched
    same = ["generate", str(chest_nifti), "--out", str(out), *ARGS]
    for extra in (["--dicom"], ["--series-uid", "3"], ["--alias", "P1"]):  # output-shaping options are settings too
        result = CliRunner().invoke(app, [*same, *extra])
        assert result.exit_code == 1 and "different settings" in result.output, (extra, result.output)
    assert digest(out, skip=()) == before
    result = CliRunner().invoke(app, [*args, "--restart"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "images").glob("*.png"))) == 1
