"""Dataset folders whose file operations never follow a symbolic link out of the folder.

A folder registered with :func:`guard` (``generate`` registers its output folder for the run) is a *confined root*:
every dataset file operation of ``data/`` on a path under it (atomic writes, manifest appends and truncations,
reads, removals, folder creation) walks the path from the root one component at a time with ``O_NOFOLLOW``, so a
symbolic link anywhere below the root (``images/`` -> elsewhere, ``manifest.jsonl`` -> a file outside) and a
``..`` component are refused with :class:`UnsafePathError` (one line naming the path) instead of being followed.
The root itself and its parents may be links (an output folder on another disk is fine). Paths outside every
confined root are handled as plain paths.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath

from data.errors import UnsafePathError

# Registered roots as absolute path parts (both as given and resolved) -> registration count.
_ROOTS: dict[tuple[str, ...], int] = {}
# Per registered root form: the root-relative names written by atomic writes while it is registered.
_WRITTEN: dict[tuple[str, ...], set[str]] = {}
# POSIX flags (the dir_fd walk needs a POSIX system; getattr keeps the module importable elsewhere).
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _parts(path: str | PurePath) -> tuple[str, ...]:
    """Absolute path parts without resolving links or collapsing ``..`` (so an escape stays visible)."""
    return Path(os.getcwd(), path).parts if not os.path.isabs(path) else Path(path).parts


def guard(root: str | Path) -> None:
    """Confine file operations under ``root`` (see the module docstring) until as many :func:`release` calls."""
    for form in {_parts(os.path.abspath(root)), _parts(os.path.realpath(root))}:
        _ROOTS[form] = _ROOTS.get(form, 0) + 1


def release(root: str | Path) -> None:
    """Undo one :func:`guard` of ``root``."""
    for form in {_parts(os.path.abspath(root)), _parts(os.path.realpath(root))}:
        if _ROOTS.get(form, 0) > 1:
            _ROOTS[form] -= 1
        else:
            _ROOTS.pop(form, None)
            _WRITTEN.pop(form, None)


@contextmanager
def guarded(root: str | Path) -> Iterator[None]:
    """``with guarded(root):`` confines file operations under ``root`` for the block."""
    guard(root)
    try:
        yield
    finally:
        release(root)


def confined_root(path: str | Path) -> tuple[Path, tuple[str, ...]] | None:
    """The innermost registered root holding ``path`` and the path's parts below it, or None when unconfined."""
    parts = _parts(path)
    best: tuple[str, ...] | None = None
    for root in _ROOTS:
        if len(root) <= len(parts) and parts[: len(root)] == root and (best is None or len(root) > len(best)):
            best = root
    if best is None:
        return None
    return Path(*best), parts[len(best) :]


def note_written(path: str | Path) -> None:
    """Remember that ``path`` was written (called by the atomic writers); nothing happens outside confined roots."""
    found = confined_root(path)
    if found is not None:
        _WRITTEN.setdefault(found[0].parts, set()).add("/".join(found[1]))


def written_under(root: str | Path) -> set[str]:
    """Root-relative names of the files atomically written under ``root`` (by this process) since it was guarded."""
    forms = {_parts(os.path.abspath(root)), _parts(os.path.realpath(root))}
    return set().union(*(_WRITTEN.get(form, set()) for form in forms))


def _is_link(name: str, dir_fd: int) -> bool:
    """Whether ``name`` in the folder ``dir_fd`` is a symbolic link (absent counts as not)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _link_error(root: Path, below: tuple[str, ...]) -> UnsafePathError:
    """The one-line refusal for a link at ``root/below``."""
    return UnsafePathError(
        Path(root, *below),
        f"is a symbolic link inside the dataset folder {root}; DiffusionXRay does not follow links out of its "
        "output folder (replace the link by a real folder/file or choose another --out)",
    )


def _open_child_dir(fd: int, name: str, root: Path, below: tuple[str, ...], create: bool) -> int:
    """Open the real folder ``name`` inside ``fd`` (created if missing and ``create``), refusing a link."""
    for _ in range(2):  # a folder created concurrently (another actor) between open and mkdir: open again
        try:
            return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(name, fd):
                raise _link_error(root, below) from None
            raise
    return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)


@contextmanager
def parent_dir(path: str | Path, create: bool = False) -> Iterator[tuple[int, str, bool]]:
    """Yield (open fd of ``path``'s folder, ``path``'s name, confined?), creating missing folders if ``create``.

    Under a confined root every folder from the root down is opened without following links; a link or a ``..``
    raises :class:`UnsafePathError`. The name's own link status is the caller's to check (see :func:`check_not_link`).
    """
    found = confined_root(path)
    if found is None:
        folder = Path(path).parent
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, _DIR_FLAGS)
        try:
            yield fd, Path(path).name, False
        finally:
            os.close(fd)
        return
    root, below = found
    if not below or any(p in ("..", "") for p in below):
        raise UnsafePathError(Path(path), f"is not a file inside the dataset folder {root}")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)  # the root itself may be a link: only what lies below it is confined
    try:
        for depth, name in enumerate(below[:-1], start=1):
            child = _open_child_dir(fd, name, root, below[:depth], create)
            os.close(fd)
            fd = child
        yield fd, below[-1], True
    finally:
        os.close(fd)


def check_not_link(path: str | Path, dir_fd: int, name: str, confined: bool) -> None:
    """Refuse a confined ``path`` (``name`` in ``dir_fd``) that is a symbolic link."""
    found = confined_root(path) if confined and _is_link(name, dir_fd) else None
    if found is not None:
        raise _link_error(*found)


def open_file(path: str | Path, flags: int, mode: int = 0o644, create_dirs: bool = False) -> int:
    """``os.open`` that refuses links below a confined root (the file itself included); returns the fd."""
    with parent_dir(path, create=create_dirs) as (dir_fd, name, confined):
        try:
            return os.open(name, flags | getattr(os, "O_CLOEXEC", 0) | (_NOFOLLOW if confined else 0), mode,
                           dir_fd=dir_fd)  # fmt: skip
        except OSError as exc:
            if confined and exc.errno == errno.ELOOP:
                check_not_link(path, dir_fd, name, confined)
            raise


def remove_file(path: str | Path) -> bool:
    """Remove a regular file; a link, a folder or a missing path is left alone. Returns whether it removed one."""
    try:
        with parent_dir(path) as (dir_fd, name, _):
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                return False
            os.unlink(name, dir_fd=dir_fd)
            return True
    except FileNotFoundError:
        return False


def remove_empty_dir(path: str | Path) -> bool:
    """Remove ``path`` if it is an empty real folder (never a link). Returns whether it did."""
    try:
        with parent_dir(path) as (dir_fd, name, _):
            if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return False
            os.rmdir(name, dir_fd=dir_fd)
            return True
    except OSError:  # missing, not empty, or not allowed: leave it
        return False


def find_links(root: str | Path, names: list[str] | tuple[str, ...]) -> list[Path]:
    """Symbolic links among ``root/<name>`` and anywhere inside those that are real folders (no link followed)."""
    root = Path(root)
    found: list[Path] = []
    for name in names:
        top = root / name
        if top.is_symlink():
            found.append(top)
        elif top.is_dir():
            for folder, dirs, files in os.walk(top):  # os.walk lists linked folders but never enters them
                found += [Path(folder, n) for n in dirs + files if Path(folder, n).is_symlink()]
    return sorted(found)
