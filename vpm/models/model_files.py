"""A configured model's files on this machine: where they are (`ModelSource`), which of them decide what it
computes, and their digest; and `ModelUnavailable`, why a configured model cannot be used here.

The lowest layer of the model code: every embedder and the ONNX cache use it, and it imports neither torch nor the
Hugging Face hub (vpm.models.embeddings decides where the files come from).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Files whose content decides what a local model computes; their hash keys a local folder's embedding cache.
MODEL_FILE_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".json", ".txt", ".model"}


class ModelUnavailable(Exception):
    """The configured model cannot be used here; the message is the fallback reason shown to people."""


@dataclass(frozen=True)
class ModelSource:
    """Where a configured model's files are, found without importing torch (or waiting on more than one probe)."""

    name: str  # as configured
    model_id: str
    display_name: str
    folder: Path | None  # the model's files on this machine; None for a hub model still to download
    repo_id: str | None = None  # hub models
    exact: bool = True  # False: the hub repo was guessed without sentence-transformers' list of classic names


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that decide what it computes (hidden folders left out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in MODEL_FILE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def model_file_names(root: Path) -> list[str]:
    """model_files as paths relative to `root` (what a model's id and its export's key are hashed from)."""
    return [path.relative_to(root).as_posix() for path in model_files(root)]


def folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap fingerprint (path, size, mtime) so the content hash is recomputed only when files change."""
    stamps = []
    for path in model_files(folder):
        stat = path.stat()
        stamps.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@lru_cache(maxsize=32)
def folder_digest(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for relative, _size, _mtime in stamp:
        digest.update(relative.encode() + b"\0")
        with open(folder / relative, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def files_digest(folder: Path) -> str:
    """A short hash of the files of `folder` that decide what its model computes (cached while they are unchanged)."""
    return folder_digest(folder, folder_stamp(folder))
