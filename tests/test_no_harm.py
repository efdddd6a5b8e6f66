"""No run harms data it does not own: links out of the folder, foreign folders, lost settings, two writers, Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data.atomic import atomic_write_bytes, atomic_write_json
from data.confine import guarded
from data.errors import UnsafePathError
from data.manifest import Manifest
from data.ownership import LOCK, LOCK_PID, MARKER
from pipeline.cli import app

ARGS = ["--size", "64", "-n", "3", "--seed", "3", "--no-progress", "--device", "cpu", "--no-enhance"]
ROOT = Path(__file__).resolve().parents[1]


def run(ct: Path, out: Path, *extra: str):  # noqa: ANN201 - click.testing.Result
    """``diffusionxray generate`` in-process on the tiny settings (``extra`` appended, later options win)."""
    return CliRunner().invoke(app, ["generate", str(ct), "--out", str(out), *ARGS, *extra])


def start(ct: Path, out: Path, kill_after_images: int | None = None) -> subprocess.Popen:
    """The same command as :func:`run` in its own process (stderr captured), optionally SIGKILLed mid-run."""
    from test_resume import KILL_AFTER_IMAGES

    main = ["-m", "pipeline.cli"] if kill_after_images is None else ["-c", KILL_AFTER_IMAGES, str(kill_after_images)]
    cmd = [sys.executable, *main, "generate", str(ct), "--out", str(out), *ARGS]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (links listed by their target, never followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def error_line(result) -> str:  # noqa: ANN001
    """The run's single ``error:`` line (and no traceback)."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:  # noqa: ANN001
    """Poll ``condition()`` every 5 ms until true; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(chest_nifti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lone, uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    result = run(chest_nifti, out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A user's file outside every output folder: no line break at its end, like a torn manifest."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(b'{"keep": 1}\n{"keep": 2}\npartial last line')
    return path


# ------------------------------------------------------------------------------ links out of the folder


def test_symlinked_manifest_is_refused_and_its_target_unchanged(
    chest_nifti: Path, reference: Path, tmp_path: Path, victim: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    next(iter(sorted((out / "images").glob("*.png")))).unlink()  # one sample to redo: a record would be appended
    victim.write_bytes((out / "manifest.jsonl").read_bytes() + b"partial last line")
    before = victim.read_bytes()
    (out / "manifest.jsonl").unlink()
    (out / "manifest.jsonl").symlink_to(victim)
    line = error_line(run(chest_nifti, out))
    assert str(out / "manifest.jsonl") in line and "symbolic link" in line, line
    assert victim.read_bytes() == before and (out / "manifest.jsonl").is_symlink()


@pytest.mark.parametrize("name", ["config.json", "dataset.json", "metadata.csv", MARKER, LOCK])
def test_symlinked_dataset_file_is_refused(
    chest_nifti: Path, reference: Path, tmp_path: Path, victim: Path, name: str
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    (out / name).unlink()
    (out / name).symlink_to(victim)
    before = victim.read_bytes()
    line = error_line(run(chest_nifti, out))
    assert str(out / name) in line and "symbolic link" in line, line
    assert victim.read_bytes() == before and (out / name).is_symlink()


def test_symlinked_images_folder_is_refused_and_nothing_written_through_it(
    chest_nifti: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    elsewhere = tmp_path / "user_images"
    elsewhere.mkdir()
    for png in (out / "images").glob("*.png"):  # same names as ours, the user's bytes
        (elsewhere / png.name).write_bytes(b"the user's own image")
    shutil.rmtree(out / "images")
    (out / "images").symlink_to(elsewhere, target_is_directory=True)
    before = tree(elsewhere)
    for extra in ([], ["--restart", "--seed", "4"]):
        line = error_line(run(chest_nifti, out, *extra))
        assert str(out / "images") in line and "symbolic link" in line, line
        assert tree(elsewhere) == before


def test_manifest_naming_files_outside_the_folder_is_never_followed(
    chest_nifti: Path, reference: Path, tmp_path: Path, victim: Path
) -> None:
    """A hand-edited record naming an outside file (absolute or ../) is redone, never read as ours or removed."""
    import json

    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    entry = json.loads(lines[0])
    escape = os.path.relpath(victim, out)  # ../outside/precious.txt
    entry["files"] = {str(victim): digest, escape: digest, **entry["files"]}
    entry["record"]["file_name"] = str(victim)  # its YOLO label would be written next to it
    lines[0] = json.dumps(entry, sort_keys=True)
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    before = tree(victim.parent)
    result = run(chest_nifti, out)
    assert result.exit_code == 0 and "1 malformed entries" in result.output, result.output
    assert tree(victim.parent) == before
    result = run(chest_nifti, out, "--seed", "4", "--restart")
    assert result.exit_code == 0, result.output
    assert tree(victim.parent) == before


def test_hard_linked_manifest_gets_its_own_copy(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    """Appending never changes another name of the manifest's inode (e.g. a ``cp -al`` backup)."""
    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    next(iter(sorted((out / "images").glob("*.png")))).unlink()  # one sample to redo: one record appended
    backup = tmp_path / "backup.jsonl"
    os.link(out / "manifest.jsonl", backup)
    before = backup.read_bytes()
    result = run(chest_nifti, out)
    assert result.exit_code == 0 and "resumed: 2 finished images verified" in result.output, result.output
    assert backup.read_bytes() == before and os.stat(backup).st_nlink == 1
    assert (out / "manifest.jsonl").read_bytes().startswith(before) and os.stat(out / "manifest.jsonl").st_nlink == 1
    assert (out / "manifest.jsonl").read_bytes().count(b"\n") == before.count(b"\n") + 1


def test_writes_under_a_confined_folder_never_follow_links(tmp_path: Path, victim: Path) -> None:
    """The data layer itself refuses links and '..' below a guarded root, whoever calls it."""
    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    (root / "images").symlink_to(victim.parent, target_is_directory=True)
    (root / "manifest.jsonl").symlink_to(victim)
    (root / "config.json").symlink_to(victim)
    before = tree(victim.parent)
    with guarded(root):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            atomic_write_bytes(root / "images" / "precious.txt", b"x")
        with pytest.raises(UnsafePathError, match="symbolic link"):
            atomic_write_bytes(root / "images" / "sub" / "new.png", b"x")  # no folder made through the link
        with pytest.raises(UnsafePathError, match="symbolic link"):
            atomic_write_json(root / "config.json", {"a": 1})
        with pytest.raises(UnsafePathError, match="symbolic link"):
            Manifest(root / "manifest.jsonl").append({"a": 1})
        with pytest.raises(UnsafePathError, match="symbolic link"):
            Manifest(root / "manifest.jsonl").read()
        with pytest.raises(UnsafePathError, match="not a file inside"):
            atomic_write_bytes(root / "labels" / ".." / ".." / "outside" / "escaped.txt", b"x")
    assert tree(victim.parent) == before and (root / "config.json").is_symlink()
    atomic_write_json(root / "config.json", {"a": 1})  # unguarded: an atomic replace swaps the link itself
    assert not (root / "config.json").is_symlink() and tree(victim.parent) == before


# ------------------------------------------------------------------------------------ folders not ours


def make_foreign_folder(out: Path) -> None:
    """A user's dataset that happens to use the same names as ours."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    (out / "config.json").write_text('{"model": "theirs"}\n')
    (out / "images" / "a.png").write_bytes(b"user image")
    (out / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (out / "metadata.csv").write_text("img_name,x,y,width,height,label\n")


@pytest.mark.parametrize("extra", [[], ["--restart"]])
def test_foreign_folder_is_refused_and_untouched(chest_nifti: Path, tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "theirs"
    make_foreign_folder(out)
    before = tree(out)
    line = error_line(run(chest_nifti, out, *extra))
    assert str(out) in line and "not a DiffusionXRay dataset" in line and "--out" in line, line
    assert tree(out) == before  # not even a lock file


def test_empty_folder_is_used_and_a_failed_run_leaves_it_empty(chest_nifti: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a CT")
    result = CliRunner().invoke(app, ["generate", str(bad), "--out", str(out), *ARGS])
    assert result.exit_code == 1 and out.is_dir() and list(out.iterdir()) == [], result.output
    assert run(chest_nifti, out).exit_code == 0 and (out / MARKER).is_file() and not (out / LOCK_PID).exists()


def test_restart_removes_only_what_the_manifest_says_the_tool_wrote(
    chest_nifti: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    (out / "notes.txt").write_text("my notes")
    (out / "images" / "mine.png").write_bytes(b"my own picture")
    (out / "labels" / "mine.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    old_images = sorted(p.name for p in (out / "images").glob("*_*.png"))
    changed = out / "images_nodule_free" / sorted(p.name for p in (out / "images_nodule_free").iterdir())[-1]
    changed.write_bytes(b"edited by the user after the run")  # no longer what the tool wrote: kept
    result = run(chest_nifti, out, "--seed", "4", "-n", "1", "--restart")
    assert result.exit_code == 0, result.output
    assert "--restart removed" in result.output and "1 file(s) it recorded have changed" in result.output
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "images" / "mine.png").read_bytes() == b"my own picture"
    assert (out / "labels" / "mine.txt").exists() and changed.read_bytes() == b"edited by the user after the run"
    new = sorted(p.name for p in (out / "images").glob("*_*.png"))
    assert len(new) == 1 and new[0] not in old_images  # the earlier run's images are gone, the new one is there
    assert '"seed": 4' in (out / "config.json").read_text()
    left = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not [n for n in left if any(Path(o).stem in n for o in old_images) and n != str(changed.relative_to(out))]


# ------------------------------------------------------------------------------------ settings guard


@pytest.mark.parametrize("removed", [("config.json",), ("config.json", "manifest.jsonl"), ("config.json", MARKER)])
def test_other_settings_refused_without_config_json(
    chest_nifti: Path, reference: Path, tmp_path: Path, removed: tuple[str, ...]
) -> None:
    """The marker and the manifest's fingerprints guard the settings too (without the marker: not ours)."""
    out = tmp_path / "ds"
    shutil.copytree(reference, out, symlinks=True)
    for name in removed:
        (out / name).unlink()
    before = tree(out)
    line = error_line(run(chest_nifti, out, "--seed", "4"))
    assert str(out) in line and ("different settings" in line or "not a DiffusionXRay dataset" in line), line
    assert tree(out) == before
    if MARKER not in removed:
        assert "different settings" in line and "--restart" in line


# ------------------------------------------------------------------------------- one writer at a time


@pytest.mark.slow  # a CLI run in a subprocess
def test_second_run_is_refused_while_the_first_completes_byte_identical(
    chest_nifti: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    first = start(chest_nifti, out)
    try:
        wait_for(lambda: (out / LOCK_PID).is_file() and (out / LOCK_PID).read_text().strip(), first, "the lock")
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock held, while the others try
        assert (out / LOCK_PID).read_text().split()[0] == str(first.pid)
        for extra in ([], ["--restart", "--seed", "4"]):
            line = error_line(run(chest_nifti, out, *extra))
            assert str(out) in line and f"PID {first.pid}" in line and "another DiffusionXRay run" in line, line
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert tree(out) == tree(reference)
    assert not (out / LOCK_PID).exists()


@pytest.mark.slow  # a CLI run in a subprocess
def test_lock_of_a_killed_run_does_not_block_the_resume(chest_nifti: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    killed = start(chest_nifti, out, kill_after_images=2)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (out / LOCK).exists() and (out / LOCK_PID).read_text().split()[0] == str(killed.pid)  # stale
    result = run(chest_nifti, out)
    assert result.exit_code == 0 and "resumed: 1 finished images verified" in result.output, result.output
    assert tree(out) == tree(reference)


# ------------------------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.slow  # a CLI run in a subprocess
def test_ctrl_c_says_where_it_stopped_and_the_same_command_resumes(
    chest_nifti: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    proc = start(chest_nifti, out)
    manifest = out / "manifest.jsonl"
    wait_for(lambda: manifest.is_file() and manifest.read_bytes().count(b"\n") >= 1, proc, "the first record")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C reached it")
    done = manifest.read_bytes().count(b"\n")
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.splitlines()[-1] == (
        f"interrupted: {out} holds {done} finished image(s) of this run; run the same command again to resume"
    )
    assert not (out / LOCK_PID).exists()  # the lock went with the run
    result = run(chest_nifti, out)
    assert result.exit_code == 0, result.output
    assert tree(out) == tree(reference)
