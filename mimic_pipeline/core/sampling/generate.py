"""Generate MIMIC item sets: eval sets (items per cell) and the training set (items per task).

Each cell draws from its own generator, seeded by (seed, purpose, task, cell), so the same config
gives byte-identical Parquet, and changing one study leaves the other cells' items as they were.
Every item passes the validity engine before it is written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .common import CommonSampler
from .config import GENERATOR_VERSION, TASKS, BenchmarkConfig, Cell, items_per_task
from .counting import CountingSampler
from .items import AXIS_COLUMNS, ITEM_SCHEMA, ItemBatch, struct_json, write_items, write_llava_json
from .listing import ListingSampler
from .odd_one import OddOneSampler
from .pools import SamplingError, SamplingIndex
from .templates import render_questions
from .validity import batch_problems

SAMPLERS = {"counting": CountingSampler, "listing": ListingSampler, "common": CommonSampler, "odd_one": OddOneSampler}
PURPOSES = {"eval": 1, "train": 2}

Progress = Callable[[str, int, int], None]  # (what, done, total)


def cell_rng(cfg: BenchmarkConfig, purpose: str, cell: Cell) -> np.random.Generator:
    """The cell's own generator, keyed by what the cell *is* (not its position), so adding or removing
    values of one study leaves every other cell's items as they were."""
    key = zlib.crc32(f"{cell.axis}/{cell.values}".encode())
    return np.random.default_rng([cfg.seed, PURPOSES[purpose], TASKS.index(cell.task), key])


def cell_sizes(cells: list[Cell], total: int) -> list[int]:
    """`total` items spread over cells as evenly as possible (earlier cells take the remainder)."""
    base, extra = divmod(total, len(cells))
    return [base + (i < extra) for i in range(len(cells))]


def generate_task(
    index: SamplingIndex,
    task: str,
    cfg: BenchmarkConfig,
    purpose: str,
    image_root: str | Path,
    sizes: list[int] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> pa.Table:
    """Items of one task: `sizes[i]` items for cell i (default: `cfg.items_per_cell` each).

    Cells are independent, so large sets are split over `workers` processes (default: up to 2, the
    CPUs there are); the output is identical whatever the number of workers.
    """
    cells = cfg.cells(task)
    sizes = sizes if sizes is not None else [cfg.items_per_cell] * len(cells)
    jobs = [(cell, n) for cell, n in zip(cells, sizes) if n]
    total = sum(sizes)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    global _WORKER_STATE
    _WORKER_STATE = (index, cfg, purpose, str(image_root).rstrip("/"))
    _sampler(index, task)  # built here, before any fork, so workers share its pools instead of rebuilding them
    parts: list[pa.Table] = []
    try:
        if workers > 1 and len(jobs) > 1 and total >= PARALLEL_FROM and "fork" in mp.get_all_start_methods():
            # fork: the workers share the (large) index with this process instead of receiving a copy
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                for part in pool.map(_generate_cell, jobs):
                    parts.append(part)
                    if progress:
                        progress(task, sum(p.num_rows for p in parts), total)
        else:
            for job in jobs:
                parts.append(_generate_cell(job))
                if progress:
                    progress(task, sum(p.num_rows for p in parts), total)
    finally:
        _WORKER_STATE = None
    return pa.concat_tables(parts) if parts else ITEM_SCHEMA.empty_table()


PARALLEL_FROM = 5_000  # items: below this, starting processes costs more than it saves
_WORKER_STATE: tuple | None = None  # (index, cfg, purpose, image_root) for the cell workers


def _generate_cell(job: tuple[Cell, int]) -> pa.Table:
    cell, n = job
    index, cfg, purpose, image_root = _WORKER_STATE
    rng = cell_rng(cfg, purpose, cell)
    batch = _sampler(index, cell.task).sample(cell, cfg.settings(cell.task, cell.axis), rng, n)
    problems = batch_problems(index, cell.task, batch)
    if problems:
        k = min(problems)
        raise SamplingError(f"{cell.task}/{cell.axis}={cell.axis_value}: {len(problems)} invalid items (a sampler bug), "
                            f"item {k}: {problems[k]}")  # fmt: skip
    return _cell_table(index, cfg, purpose, cell, batch, rng, image_root)


def _sampler(index: SamplingIndex, task: str):
    """One sampler per (index, task), kept on the index: its pools are built once, not per cell."""
    key = ("sampler", task)
    if key not in index.extra:
        index.extra[key] = SAMPLERS[task](index)
    return index.extra[key]


def _cell_table(index: SamplingIndex, cfg: BenchmarkConfig, purpose: str, cell: Cell, batch: ItemBatch,
                rng: np.random.Generator, image_root: str) -> pa.Table:  # fmt: skip
    """The rows of one cell: list columns gathered from the batch's arrays in bulk, text fields per item."""
    n = len(batch)
    shown = batch.images >= 0
    lengths = shown.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = pa.array(batch.images[shown])
    files = index.file_names.take(flat)
    paths = pc.binary_join_element_wise(image_root + "/", files, "") if image_root else files
    roles = pa.array(["needle", "distractor"]).take(pa.array(batch.distractor[shown].astype(np.int8)))
    questions, template_ids = render_questions(
        cell.task, rng, lengths.tolist(), names=batch.query if cell.task == "counting" else None,
        parents=[q[0] for q in batch.query] if cell.task in ("listing", "odd_one") else None)  # fmt: skip
    values = {**dict(cell.values), "n_images": lengths}
    if cell.axis == "distractors":
        values["n_distractors"] = batch.distractor.sum(axis=1)
    safe_value = cell.axis_value.replace("/", "_")

    def same(value, column: str) -> pa.Array:
        return pa.repeat(pa.scalar(value, ITEM_SCHEMA.field(column).type), n)

    columns = {
        "item_id": pa.array([f"{purpose}.{cell.task}.{cell.axis}.{safe_value}.{k:05d}" for k in range(n)]),
        "task": same(cell.task, "task"), "axis": same(cell.axis, "axis"), "axis_value": same(cell.axis_value, "axis_value"),
        **{col: pa.array(values[col], t) if isinstance(values.get(col), np.ndarray) else same(values.get(col), col)
           for col, t in AXIS_COLUMNS.items()},
        "query": pa.array(batch.query, pa.list_(pa.string())),
        "image_ids": pa.ListArray.from_arrays(offsets, index.image_ids.take(flat)),
        "image_paths": pa.ListArray.from_arrays(offsets, paths),
        "image_roles": pa.ListArray.from_arrays(offsets, roles),
        "question": pa.array(questions, pa.string()), "template_id": pa.array(template_ids, pa.int32()),
        "answer": pa.array(batch.answers, pa.string()), "answer_struct": pa.array([struct_json(s) for s in batch.structs], pa.string()),
        "source": same(index.source, "source"), "split": same(index.split, "split"), "seed": same(cfg.seed, "seed"),
        "generator_version": same(GENERATOR_VERSION, "generator_version"), "config_hash": same(cfg.hash, "config_hash"),
    }  # fmt: skip
    return pa.table(columns, schema=ITEM_SCHEMA)


def generate_eval_sets(index: SamplingIndex, cfg: BenchmarkConfig, image_root, progress: Progress | None = None) -> dict[str, pa.Table]:
    return {task: generate_task(index, task, cfg, "eval", image_root, progress=progress) for task in cfg.tasks}


def generate_train_sets(
    index: SamplingIndex, cfg: BenchmarkConfig, image_root, total: int, mix: dict[str, float], progress: Progress | None = None
) -> dict[str, pa.Table]:
    per_task = items_per_task(total, mix)
    return {task: generate_task(index, task, cfg, "train", image_root, cell_sizes(cfg.cells(task), n), progress)
            for task, n in per_task.items() if n}  # fmt: skip


def write_item_sets(out_dir: str | Path, purpose: str, tables: dict[str, pa.Table], llava: bool = False) -> list[Path]:
    """`<out>/<purpose>/<task>.parquet` per task (and `<out>/llava/<task>.json` with `llava`), atomically."""
    out_dir = Path(out_dir)
    written = []
    for task, table in tables.items():
        written.append(write_items(table, out_dir / purpose / f"{task}.parquet"))
        if llava:
            written.append(write_llava_json(table, out_dir / "llava" / f"{task}.json"))
    return written
