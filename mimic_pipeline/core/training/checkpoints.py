"""Checkpoint directories: what makes one complete, its metadata, and finding the complete ones.

A checkpoint is an ordinary Hugging Face directory (full weights, or a peft adapter whose config
names its base) plus `mimic_checkpoint.json` (recipe, base, training-set version, config hash,
steps, loss curve) and a `DONE` marker written last. A directory without `DONE` is still being
written (or was abandoned) and is never evaluated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..models.adapters import CHECKPOINT_METADATA

DONE = "DONE"
METADATA = CHECKPOINT_METADATA
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")  # usable as a Dagster partition key
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class CheckpointError(ValueError):
    pass


def checkpoint_files_for(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file()}


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / DONE).is_file()


def read_metadata(folder: str | Path) -> dict:
    path = Path(folder) / METADATA
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-run the training asset or delete the file") from None


def validate_checkpoint(folder: str | Path) -> dict:
    """Metadata of a complete checkpoint, or a CheckpointError naming what is wrong and the fix."""
    folder = Path(folder)
    if not NAME_PATTERN.match(folder.name):
        raise CheckpointError(f"{folder}: checkpoint names may use letters, digits, '_', '.', '-' only; rename it")
    if not is_complete(folder):
        raise CheckpointError(f"{folder}: no {DONE} marker, so it is incomplete (still copying or a failed run); "
                              f"create {DONE} once every file is in place")  # fmt: skip
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise CheckpointError(f"{folder}: neither config.json nor adapter_config.json; not a model directory")
    if not any((folder / f).exists() for f in WEIGHT_FILES):
        raise CheckpointError(f"{folder}: no weights ({', '.join(WEIGHT_FILES)}); copy them in, then {DONE}")
    metadata = read_metadata(folder)
    expected = metadata.get("files", {})
    for name, size in expected.items():
        actual = (folder / name).stat().st_size if (folder / name).exists() else None
        if actual != size and name != DONE:
            raise CheckpointError(f"{folder / name}: {'missing' if actual is None else f'{actual} bytes'}, the metadata "
                                  f"says {size} bytes: a half-written copy; copy the checkpoint again")  # fmt: skip
    return metadata


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under `root` that have their DONE marker, sorted by name."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_complete(p))
