"""Atomic file and folder writes: a failed or killed write never replaces a good artefact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The temporary file lives in the same folder so the rename is atomic on POSIX.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; swap it in only if the block succeeds.

    The previous folder is moved aside, the new one renamed into place, then the old one removed,
    so at every instant either the old or the new complete folder is at `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.tmp-{tag}")
    old = final.with_name(f".{final.name}.old-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_fingerprints(files: dict[str, str | Path]) -> dict[str, list]:
    """(path, size, mtime) of each input file: cheap for 2 GB CSVs, and changes whenever the file does."""
    out = {}
    for role, path in sorted(files.items()):
        p = Path(path)
        out[role] = [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p)]
    return out


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-able config, used for lineage and Dagster data versions."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
