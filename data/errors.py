"""The one-line errors of dataset writes (shared by the atomic writers, the manifest and folder confinement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DatasetWriteError(OSError):
    """A dataset file that could not be written; ``str(err)`` is one line, ``"PATH: problem"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # keep the message on one line
        super().__init__(f"{self.path}: {self.problem}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles its args only; keep (path, problem) so the error survives worker processes.
        return (type(self), (self.path, self.problem))


class UnsafePathError(DatasetWriteError):
    """A path inside a confined dataset folder that is a symbolic link or leaves the folder; ``str`` is one line."""
