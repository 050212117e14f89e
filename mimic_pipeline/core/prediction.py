"""An answerer (a checkpoint's variant, or a reference baseline) answers an item set: batched,
written in small atomic parts, resumable; `evaluate` runs every variant and assembles the table.

Predictions of one (checkpoint, task, variant) go to `<folder>/part-<first item>.parquet`, a few
hundred items per part, each written to a temporary name and renamed. A run that is killed leaves
only whole parts; the next run reads which items they hold and answers only the others, so after
any number of interruptions the assembled table has every item exactly once. Rows carry the raw
answer, the scorer's verdict and the seconds per item (the batch's wall time shared by its items).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .evaluation import PREDICTION_SCHEMA, score_predictions
from .files import atomic_path

PART_GLOB = "part-*.parquet"


def predicted_ids(folder: Path) -> set[str]:
    """Item ids already answered in `folder` (whole parts only: partial writes never get a part name)."""
    ids: set[str] = set()
    for part in sorted(Path(folder).glob(PART_GLOB)):
        ids.update(pq.read_table(part, columns=["item_id"]).column("item_id").to_pylist())
    return ids


def model_answerer(adapter, variant, images, max_new_tokens: int = 24) -> Callable[[pa.Table], list[str]]:
    """`answer(batch)` for a model: each row's images (by path) and question through `adapter.generate`."""
    from .training.data import model_inputs

    def answer(batch: pa.Table) -> list[str]:
        inputs = model_inputs(images, batch.column("image_paths").to_pylist(), batch.column("question").to_pylist())
        return adapter.generate(inputs, variant, max_new_tokens)

    return answer


def read_parts(folder: Path) -> pa.Table:
    """Every part of `folder`, each item once (a part re-written after a crash never duplicates)."""
    parts = [pq.read_table(p, schema=PREDICTION_SCHEMA) for p in sorted(Path(folder).glob(PART_GLOB))]
    if not parts:
        return PREDICTION_SCHEMA.empty_table()
    table = pa.concat_tables(parts)
    seen, keep = set(), []
    for i, item_id in enumerate(table.column("item_id").to_pylist()):
        if item_id not in seen:
            seen.add(item_id)
            keep.append(i)
    return table.take(keep) if len(keep) < table.num_rows else table


def predict_items(
    answer: Callable[[pa.Table], list[str]],
    items: pa.Table,
    folder: str | Path,
    checkpoint: str,
    variant: str,
    batch_size: int = 32,
    part_size: int = 256,
    vocabulary=None,
    progress: Callable[[int, int], None] | None = None,
    items_version: str = "",
) -> tuple[pa.Table, int]:
    """Answer the items not yet in `folder`; returns (all predictions, items answered in this call).

    `answer(batch)` returns one answer per row of an item table (a model adapter, or a baseline).
    `items_version` identifies the item set: parts left by a different version are discarded.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    version_file = folder / "ITEMS_VERSION"
    if version_file.exists() and version_file.read_text().strip() != items_version:
        for part in folder.glob(PART_GLOB):  # answers to other items: not resumable
            part.unlink()
    with atomic_path(version_file) as tmp:
        tmp.write_text(items_version + "\n")
    done = predicted_ids(folder) & set(items.column("item_id").to_pylist())
    todo = [i for i, item_id in enumerate(items.column("item_id").to_pylist()) if item_id not in done]
    total, answered = items.num_rows, 0
    for start in range(0, len(todo), part_size):
        chunk = items.take(todo[start : start + part_size])
        answers, seconds = [], []
        for b in range(0, chunk.num_rows, batch_size):
            batch = chunk.slice(b, batch_size)
            started = time.perf_counter()
            out = answer(batch)
            if len(out) != batch.num_rows:
                raise RuntimeError(f"{checkpoint}/{variant}: {len(out)} answers for a batch of {batch.num_rows} items")
            answers += out
            seconds += [(time.perf_counter() - started) / batch.num_rows] * batch.num_rows
        scored = score_predictions(chunk, answers, checkpoint, variant, seconds, vocabulary)
        first = chunk.column("item_id")[0].as_py()
        with atomic_path(folder / f"part-{first}.parquet") as tmp:
            pq.write_table(scored, tmp)
        answered += chunk.num_rows
        if progress:
            progress(len(done) + answered, total)
    return read_parts(folder), answered


@dataclass
class Evaluation:
    """What `evaluate` leaves: every variant's predictions assembled in one table and file."""

    table: pa.Table
    path: Path
    items_per_s: dict[str, float] = field(default_factory=dict)  # variant -> speed of the items answered now

    def accuracy(self) -> dict[str, float]:
        """Percent correct per variant, in the order the variants ran."""
        out = {}
        for variant in dict.fromkeys(self.table.column("variant").to_pylist()):
            rows = self.table.filter(pc.equal(self.table.column("variant"), variant))
            out[variant] = round(100 * pc.mean(rows.column("correct").cast(pa.float64())).as_py(), 2)
        return out


def evaluate(
    answerers: dict[str, Callable[[pa.Table], list[str]]],
    items: pa.Table,
    root: str | Path,
    name: str,
    task: str,
    batch_size: int = 32,
    vocabulary=None,
    items_version: str = "",
    log: Callable[[str], None] | None = None,
) -> Evaluation:
    """One answerer (a checkpoint or a reference baseline) on one task's items, per variant.

    `answerers` maps a variant name to its `answer(batch)`. Each variant resumes from its parts
    under `<root>/<name>/<variant>/<task>/`; all of them are assembled atomically into
    `<root>/<name>/<task>.parquet`, the file the `predictions` view and the metrics read.
    """
    root = Path(root)
    tables, speed = [], {}
    for variant, answer in answerers.items():
        started = time.perf_counter()

        def progress(done: int, total: int, label=variant) -> None:
            if log:
                log(f"{name} {task} {label}: {done}/{total} items")

        table, answered = predict_items(answer, items, root / name / variant / task, name, variant, batch_size,
                                        vocabulary=vocabulary, progress=progress, items_version=items_version)  # fmt: skip
        if answered:
            speed[variant] = round(answered / (time.perf_counter() - started), 1)
        tables.append(table)
    path = root / name / f"{task}.parquet"
    result = pa.concat_tables(tables) if tables else PREDICTION_SCHEMA.empty_table()
    with atomic_path(path) as tmp:
        pq.write_table(result, tmp, compression="zstd")
    return Evaluation(result, path, speed)
