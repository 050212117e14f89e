"""Benchmark item generation: the 198K training set from an OpenImages-scale index, and the eval sets.

Builds deterministic synthetic annotation indexes (not timed) with the schemas of
`mimic_pipeline/core/annotations/index.py` and writes them as Parquet, the way the annotation stage
leaves them:

* train: OpenImages-scale, 1.74M images (`--images`), 600 classes (540 leaves under 60 parents, each
  parent with >= 2 leaf children, a few leaves with two parents; parents have boxes too, as in
  OpenImages), Zipf-like class frequencies, 1-13 distinct classes per image (mostly 4-8), per-(image,
  class) counts mostly 1 with a tail up to 20, ~5% crowd (group) flags;
* eval: COCO val2017-style, 5,000 images, 80 classes under 12 super-categories ("person" its own).

Then each measurement runs `--runs` times, each in a fresh interpreter (cold caches; peak memory from
/proc: the process's VmHWM, and the summed PSS of it and the workers the generator forks): reading the Parquet index, `build_sampling_index` (timed separately), then
`generate_train_sets(total=198_000, mix=DEFAULT_TRAIN_MIX)` or `generate_eval_sets` (items_per_cell 100).
Two smaller training sets (1/25 and 4/25 of the items) run first; the line through their times
estimates one full run. Where that is over `--max-train-s`, the full set is not run and its time is
projected from the smaller ones (the output says so on the row); otherwise it runs as many times as
`--train-budget-s` allows (at least once, at most `--runs`).

The same run compares the project's generator with a straightforward per-item rejection sampler
(`benchmarks/naive_sampler.py`) on the same cells and item counts (counting spread / distractors /
n_images and common n_images), and reports the ratio of their items/s. Linux only: memory is read
from /proc.

    .venv/bin/python benchmarks/generation.py             # default: 1.74M images, 198K train items
    .venv/bin/python benchmarks/generation.py --quick     # small smoke run
    .venv/bin/python benchmarks/generation.py --profile   # also cProfile one training run (top functions)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from report import freebase_ids, markdown_table, peak_rss_kib, plain_table  # sibling module: scripts run as benchmarks/X.py

# the package of this checkout, not whichever one the interpreter has installed (an editable install of
# another worktree would otherwise be measured while the table names this checkout's commit)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED = 20240611
TRAIN_ITEMS = 198_000
OPENIMAGES_IMAGES = 1_740_000
COCO_IMAGES, COCO_BOXES = 5_000, 36_000  # val2017's size
TRAIN_GOAL_S, TRAIN_GOAL_MIB, EVAL_GOAL_S = 20.0, 2048, 10.0
TRAIN_SOURCE, TRAIN_SPLIT = "openimages", "train"
EVAL_SOURCE, EVAL_SPLIT = "coco", "val2017"
IMAGE_ROOT = "/data/images"  # only written into the items' image_paths

# COCO's 12 super-categories with their real number of classes (80 in all).
COCO_SUPERCATEGORIES = {
    "person": 1, "vehicle": 8, "outdoor": 5, "animal": 10, "accessory": 5, "sports": 10,
    "kitchen": 7, "food": 10, "furniture": 6, "electronic": 6, "appliance": 5, "indoor": 7,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Synthetic indexes (deterministic, vectorised, not timed)
# ---------------------------------------------------------------------------------------------


def pseudo_names(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct pronounceable class names ("Tovamek", "Bu rasi"), so questions read like English."""
    onsets = list("bdfgklmnprstvz") + ["br", "tr", "sk", "pl", "gr", "ch", "sh"]
    syllables = [o + v for o in onsets for v in "aeiou"]
    names: dict[str, None] = {}
    while len(names) < n:
        parts = rng.choice(syllables, size=int(rng.integers(2, 5)))
        word = "".join(parts)
        if rng.random() < 0.2:  # some two-word names, like "Human face"
            cut = int(rng.integers(1, len(parts)))
            word = "".join(parts[:cut]) + " " + "".join(parts[cut:])
        names.setdefault(word.capitalize())
    return list(names)


def zipf_probabilities(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like frequencies over `n` classes, ranks in random order."""
    p = np.empty(n)
    p[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2.4's hash-based np.unique is several times slower on 10M ints)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def counts_table(
    source: str, split: str, image_ids: pa.Array, img: np.ndarray, cat_ids: list[str], cat: np.ndarray,
    count: np.ndarray, crowd: np.ndarray,
) -> pa.Table:  # fmt: skip
    """instance_counts rows for (image index, class index) pairs, ordered by image id then class id."""
    rank = np.argsort(np.argsort(cat_ids))  # class index -> position of its id in string order
    order = np.argsort(img * len(cat_ids) + rank[cat], kind="stable")  # ~free when already in order
    n = len(img)
    return pa.table({
        "source": pa.array([source]).take(np.zeros(n, np.int32)),
        "split": pa.array([split]).take(np.zeros(n, np.int32)),
        "image_id": image_ids.take(img[order]),
        "category_id": pa.array(cat_ids).take(cat[order]),
        "count": count[order].astype(np.int32),
        "crowd": crowd[order],
    })  # fmt: skip


def openimages_index(n_images: int, seed: int) -> dict[str, pa.Table]:
    """An OpenImages-scale index: 600 classes in a 2-level hierarchy, Zipf frequencies, skewed counts."""
    rng = np.random.default_rng(seed)
    n_parents, n_leaves = 60, 540
    n_classes = n_parents + n_leaves
    ids, names = sorted(freebase_ids(rng, n_classes)), pseudo_names(rng, n_classes)
    # Parents are classes 0..59, leaves 60..599. Every parent gets two leaves, the other leaves go to
    # parents with Zipf-skewed family sizes (a few big families, as "Clothing" or "Animal"); 2% of the
    # leaves sit under a second parent too, as in the real hierarchy.
    family_p = zipf_probabilities(rng, n_parents, 0.5)
    first = np.concatenate([np.repeat(np.arange(n_parents), 2), rng.choice(n_parents, n_leaves - 2 * n_parents, p=family_p)])
    rng.shuffle(first)
    second = np.where(rng.random(n_leaves) < 0.02, rng.integers(0, n_parents, n_leaves), -1)
    second[second == first] = -1
    cat_rows = [(ids[p], names[p], None) for p in range(n_parents)]
    for leaf in range(n_leaves):
        for p in sorted({int(first[leaf]), int(second[leaf])} - {-1}):
            cat_rows.append((ids[n_parents + leaf], names[n_parents + leaf], names[p]))
    categories = pa.table({
        "source": [TRAIN_SOURCE] * len(cat_rows), "category_id": [r[0] for r in cat_rows],
        "name": [r[1] for r in cat_rows], "parent": pa.array([r[2] for r in cat_rows], pa.string()),
        "is_thing": [True] * len(cat_rows),
    })  # fmt: skip

    # Images: 16-hex-digit ids (sorted as strings = sorted as numbers), 1024-pixel long side.
    raw = sorted_unique(rng.integers(0, 2**63, size=n_images + 1000, dtype=np.int64))[:n_images]
    image_ids = pa.array([f"{i:016x}" for i in raw.tolist()])
    sizes = np.array([(1024, 768), (1024, 683), (768, 1024), (1024, 576), (1024, 1024)], np.int32)
    size = sizes[rng.choice(len(sizes), n_images, p=[0.45, 0.25, 0.15, 0.1, 0.05])]
    images = pa.table({
        "source": pa.array([TRAIN_SOURCE]).take(np.zeros(n_images, np.int32)),
        "split": pa.array([TRAIN_SPLIT]).take(np.zeros(n_images, np.int32)),
        "image_id": image_ids, "file_name": pc.binary_join_element_wise(image_ids, ".jpg", ""),
        "width": size[:, 0], "height": size[:, 1],
    })  # fmt: skip

    # Classes per image: 1 + Poisson(4.5) draws (mostly 4-8, some images with one or two classes),
    # Zipf over all 600 classes (parents have boxes too), de-duplicated within each image.
    draws = np.minimum(1 + rng.poisson(4.5, n_images), 13)
    img = np.repeat(np.arange(n_images, dtype=np.int64), draws)
    cat = rng.choice(n_classes, size=img.size, p=zipf_probabilities(rng, n_classes, 0.9))
    key = sorted_unique(img * n_classes + cat)
    img, cat = key // n_classes, key % n_classes
    # Instances per (image, class): a Zipf tail whose steepness depends on the class (people, cars
    # and windows come in groups, most classes alone), folded into 1..20.
    steep = rng.uniform(2.0, 3.5, n_classes)
    count = (rng.zipf(steep[cat]) - 1) % 20 + 1
    # Group ("crowd") boxes: rare for a single instance, common where there are several.
    crowd = rng.random(img.size) < np.where(count >= 3, 0.2, 0.03)
    counts = counts_table(TRAIN_SOURCE, TRAIN_SPLIT, image_ids, img, ids, cat, count, crowd)
    return {"categories": categories, "images": images, "instance_counts": counts}


def coco_index(n_images: int, n_boxes: int, seed: int) -> dict[str, pa.Table]:
    """A COCO val2017-style index: 80 classes under 12 super-categories, person 30% of the boxes,
    boxes per image long-tailed, boxes of an image often of the same class, 1% crowd boxes."""
    rng = np.random.default_rng(seed)
    supers = [s for s, k in COCO_SUPERCATEGORIES.items() for _ in range(k)]
    ids = [str(i) for i in range(1, 81)]
    names = ["person", *pseudo_names(rng, 79)]
    categories = pa.table({
        "source": [EVAL_SOURCE] * 80, "category_id": ids, "name": [n.lower() for n in names],
        "parent": supers, "is_thing": [True] * 80,
    })  # fmt: skip
    raw = np.sort(rng.choice(np.arange(1, 581_930), size=n_images, replace=False))
    image_ids = pa.array([str(i) for i in raw.tolist()])
    images = pa.table({
        "source": [EVAL_SOURCE] * n_images, "split": [EVAL_SPLIT] * n_images, "image_id": image_ids,
        "file_name": [f"{i:012d}.jpg" for i in raw.tolist()],
        "width": np.full(n_images, 640, np.int32), "height": rng.choice(np.array([480, 427, 426, 360], np.int32), n_images),
    })  # fmt: skip
    # boxes per image: 1% empty, the rest gamma-distributed; class per box with repeats within an image
    has = rng.random(n_images) >= 0.01
    weights = rng.gamma(1.2, size=n_images) * has
    per_image = has + rng.multinomial(n_boxes - has.sum(), weights / weights.sum())
    p = np.concatenate([[0.3], 0.7 * zipf_probabilities(rng, 79, 0.6)])
    fresh = rng.choice(80, size=n_boxes, p=p)
    starts = (np.cumsum(per_image) - per_image)[per_image > 0]
    repeat = rng.random(n_boxes) < 0.5
    repeat[starts] = False
    cls = fresh[np.maximum.accumulate(np.where(repeat, 0, np.arange(n_boxes)))]
    owner = np.repeat(np.arange(n_images, dtype=np.int64), per_image)
    key, inverse = np.unique(owner * 80 + cls, return_inverse=True)
    count = np.bincount(inverse)
    crowd = np.bincount(inverse, weights=rng.random(n_boxes) < 0.01) > 0
    counts = counts_table(EVAL_SOURCE, EVAL_SPLIT, image_ids, key // 80, ids, key % 80, count, crowd)
    return {"categories": categories, "images": images, "instance_counts": counts}


def index_summary(tables: dict[str, pa.Table]) -> str:
    counts = tables["instance_counts"]
    n_images = tables["images"].num_rows
    c = counts["count"].to_numpy()
    per_image = np.bincount(pc.index_in(counts["image_id"], tables["images"]["image_id"]).to_numpy(), minlength=n_images)
    cats = tables["categories"]
    parents = set(cats["parent"].drop_null().to_pylist())
    return (f"{n_images:,} images, {len(cats['category_id'].unique())} classes ({len(parents)} parents), "
            f"{counts.num_rows:,} (image, class) rows: {per_image.mean():.1f} classes/image "
            f"(p10-p90 {np.percentile(per_image, 10):.0f}-{np.percentile(per_image, 90):.0f}, "
            f"{np.mean(per_image == 1):.1%} with one), count 1 in {np.mean(c == 1):.0%} of rows, "
            f"max {c.max()}, {np.mean(c):.2f} instances/row, crowd {pc.mean(counts['crowd'].cast(pa.int8())).as_py():.1%}")  # fmt: skip


def write_index(folder: Path, tables: dict[str, pa.Table]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        pq.write_table(table, folder / f"{name}.parquet", compression="zstd")
    return folder


# ---------------------------------------------------------------------------------------------
# Measurement: child side (one fresh interpreter per run)
# ---------------------------------------------------------------------------------------------

INDEX_TABLES = ("categories", "images", "instance_counts")
COMPARE_STUDIES = [("counting", "spread"), ("counting", "distractors"), ("counting", "n_images"), ("common", "n_images")]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next phase reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (the generator's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_sampling_index(job: dict, report: dict):
    """Read the Parquet index and build the SamplingIndex, timing both; the tables are dropped after."""
    import gc

    from mimic_pipeline.core.sampling.pools import build_sampling_index

    report["baseline_kib"] = peak_rss_kib()
    t0 = time.time()
    tables = [pq.read_table(Path(job["index"]) / f"{name}.parquet") for name in INDEX_TABLES]
    t1 = time.time()
    index = build_sampling_index(*tables, source=job["source"], split=job["split"])
    t2 = time.time()
    del tables
    gc.collect()
    report["phases"] = {"read": [t0, t1], "build": [t1, t2]}
    report["index_images"] = index.n_images
    report["build_peak_kib"] = peak_rss_kib()
    report["peak_reset"] = reset_peak_rss()
    return index


def child_train(job: dict, report: dict) -> None:
    from mimic_pipeline.core.sampling.config import DEFAULT_TRAIN_MIX, BenchmarkConfig, items_per_task
    from mimic_pipeline.core.sampling.generate import generate_train_sets

    index = load_sampling_index(job, report)
    task_done: dict[str, float] = {}
    start = time.time()

    def progress(task: str, done: int, total: int) -> None:
        if done == total:
            task_done[task] = time.time()

    cpu0 = cpu_seconds()
    tables = generate_train_sets(index, BenchmarkConfig(), IMAGE_ROOT, total=job["items"], mix=DEFAULT_TRAIN_MIX, progress=progress)
    end = time.time()
    report["cpu_s"] = cpu_seconds() - cpu0
    report["phases"]["generate"] = [start, end]
    report["peak_kib"] = peak_rss_kib()
    expected = {t: n for t, n in items_per_task(job["items"], DEFAULT_TRAIN_MIX).items() if n}
    got = {t: tables[t].num_rows for t in tables}
    if got != expected:
        raise SystemExit(f"generate_train_sets returned {got} items per task, expected {expected}")
    report["items"] = sum(got.values())
    previous, per_task = start, {}
    for task in expected:  # tasks are generated one after the other
        done = task_done.get(task, previous)
        per_task[task] = [expected[task], done - previous]
        previous = done
    report["per_task"] = per_task


def child_eval(job: dict, report: dict) -> None:
    from mimic_pipeline.core.sampling.config import BenchmarkConfig
    from mimic_pipeline.core.sampling.generate import generate_eval_sets

    index = load_sampling_index(job, report)
    cfg = BenchmarkConfig()
    start, cpu0 = time.time(), cpu_seconds()
    tables = generate_eval_sets(index, cfg, IMAGE_ROOT)
    end = time.time()
    report["cpu_s"] = cpu_seconds() - cpu0
    report["phases"]["generate"] = [start, end]
    report["peak_kib"] = peak_rss_kib()
    expected = {t: len(cfg.cells(t)) * cfg.items_per_cell for t in cfg.tasks}
    got = {t: tables[t].num_rows for t in tables}
    if got != expected:
        raise SystemExit(f"generate_eval_sets returned {got} items per task, expected {expected}")
    report["items"] = sum(got.values())


def study_config(task: str, axis: str):
    """A BenchmarkConfig holding only one study, with its default settings."""
    from mimic_pipeline.core.sampling.config import DEFAULT_STUDIES, BenchmarkConfig

    return BenchmarkConfig(studies={task: {axis: DEFAULT_STUDIES[task][axis]}}, tasks=(task,))


def child_compare(job: dict, report: dict) -> None:
    """The project's generator on the comparison cells, one study after the other (one process:
    each study is below the generator's parallel threshold, like the naive sampler)."""
    from mimic_pipeline.core.sampling.generate import generate_train_sets

    index = load_sampling_index(job, report)
    start = time.time()
    studies = {}
    for task, axis in COMPARE_STUDIES:
        cfg = study_config(task, axis)
        n = job["per_cell"] * len(cfg.cells(task))
        t0 = time.perf_counter()
        tables = generate_train_sets(index, cfg, IMAGE_ROOT, total=n, mix={task: 1.0})
        seconds = time.perf_counter() - t0
        if tables[task].num_rows != n:
            raise SystemExit(f"{task}/{axis}: {tables[task].num_rows} items, expected {n}")
        studies[f"{task}/{axis}"] = {"items": n, "seconds": seconds}
    report["phases"]["generate"] = [start, time.time()]
    report["peak_kib"] = peak_rss_kib()
    report["studies"] = studies
    if job.get("validate"):
        report["validation"] = validate_naive_items(index, job["validate"])


def validate_naive_items(index, path: str) -> dict:
    """Run the project's validity engine on the naive sampler's items (they must obey the same rules)."""
    try:
        from mimic_pipeline.core.sampling.items import ItemDraft
        from mimic_pipeline.core.sampling.pools import image_positions
        from mimic_pipeline.core.sampling.validity import item_problems

        items = json.loads(Path(path).read_text())
        checked, examples = 0, []
        for it in items:
            images = image_positions(index, it["image_ids"])
            draft = ItemDraft(images, it["roles"], it["query"], it["answer"], it["answer_struct"])
            problems = item_problems(index, it["task"], draft)
            checked += 1
            if problems:
                examples.append(f"{it['task']}/{it['axis']}: {problems[:2]}")
        return {"checked": checked, "invalid": len(examples), "examples": examples[:3]}
    except Exception as e:  # the package is under active change: report, do not fail the benchmark
        return {"error": f"{type(e).__name__}: {e}"}


def child_naive(job: dict, report: dict) -> None:
    from mimic_pipeline.core.sampling.config import DEFAULT_STUDIES, BenchmarkConfig
    from naive_sampler import NaiveIndex, NaiveSampler

    report["baseline_kib"] = peak_rss_kib()
    t0 = time.time()
    ix = NaiveIndex.from_parquet(job["index"], job["source"], job["split"])
    t1 = time.time()
    report["phases"] = {"setup": [t0, t1]}
    report["index_images"] = ix.n_images
    report["build_peak_kib"] = peak_rss_kib()
    cfg = BenchmarkConfig()
    cells = [(task, c) for task, axis in COMPARE_STUDIES for c in cfg.cells(task) if c.axis == axis]
    budget = job["budget_s"] / (len(cells) * len(job["modes"]))
    modes, dump = {}, []
    for mode in job["modes"]:
        sampler = NaiveSampler(ix, seed=SEED, class_choice=mode, image_root=IMAGE_ROOT)
        studies: dict[str, dict] = {}
        for task, cell in cells:
            r = sampler.run_cell(task, cell.axis, cell.axis_value, dict(cell.values), DEFAULT_STUDIES[task][cell.axis],
                                 job["per_cell"], budget)  # fmt: skip
            s = studies.setdefault(f"{task}/{cell.axis}", {"requested": 0, "items": 0, "tries": 0, "seconds": 0.0,
                                                            "given_up": 0, "cells_unfinished": 0, "cells": 0})  # fmt: skip
            s["requested"] += r.requested
            s["items"] += len(r.items)
            s["tries"] += r.tries
            s["seconds"] += r.seconds
            s["given_up"] += r.given_up
            s["cells"] += 1
            s["cells_unfinished"] += r.out_of_time or r.given_up > 0
            dump += [{"task": task, "axis": cell.axis, "mode": mode, **{k: it[k] for k in
                      ("image_ids", "roles", "query", "answer", "answer_struct")}} for it in r.items]  # fmt: skip
        modes[mode] = studies
    report["phases"]["generate"] = [t1, time.time()]
    report["peak_kib"] = peak_rss_kib()
    report["modes"] = modes
    report["budget_per_cell_s"] = budget
    Path(job["dump"]).write_text(json.dumps(dump))


def child_profile(job: dict, report: dict) -> None:
    """cProfile one training-set generation, in one process (cProfile cannot see forked workers)."""
    import cProfile
    import io
    import pstats

    import mimic_pipeline.core.sampling.generate as generate
    from mimic_pipeline.core.sampling.config import DEFAULT_TRAIN_MIX, BenchmarkConfig

    index = load_sampling_index(job, report)
    serial = hasattr(generate, "PARALLEL_FROM")
    if serial:
        generate.PARALLEL_FROM = 1 << 62  # the profile must see the work, not a wait on the workers
    profiler = cProfile.Profile()
    start = time.time()
    profiler.enable()
    generate.generate_train_sets(index, BenchmarkConfig(), IMAGE_ROOT, total=job["items"], mix=DEFAULT_TRAIN_MIX)
    profiler.disable()
    report["phases"]["generate"] = [start, time.time()]
    report["peak_kib"] = peak_rss_kib()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    for key in ("tottime", "cumulative"):
        out.write(f"\n=== top {job['top']} by {key} ===\n")
        stats.sort_stats(key).print_stats(job["top"])
    report["profile"] = out.getvalue()
    report["serial"] = serial
    report["items"] = job["items"]


CHILDREN = {"train": child_train, "eval": child_eval, "compare": child_compare, "naive": child_naive, "profile": child_profile}


def run_child(spec: str) -> None:
    job = json.loads(spec)
    report: dict = {}
    CHILDREN[job["kind"]](job, report)
    print(json.dumps(report))


# ---------------------------------------------------------------------------------------------
# Measurement: parent side
# ---------------------------------------------------------------------------------------------


class TreeMemory:
    """Samples the summed PSS of a process and all its descendants (the generator forks workers that
    share the index copy-on-write: PSS counts shared pages once, RSS would count them per process)."""

    def __init__(self, pid: int, interval: float = 0.1):
        import threading

        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (time.time(), summed PSS KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        parent_of: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [p for p, pp in parent_of.items() if pp in frontier]
            tree += frontier
        return tree

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
                except (OSError, StopIteration):
                    pass
            self.samples.append((time.time(), total))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_kib(self, t0: float, t1: float) -> int:
        return max((kib for t, kib in self.samples if t0 <= t <= t1), default=0)


def measure_child(job: dict, label: str) -> dict:
    """One fresh interpreter running `job`; its report plus the sampled tree memory per phase."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    memory = TreeMemory(proc.pid)
    out, err = proc.communicate()
    memory.stop()
    if proc.returncode != 0:
        sys.exit(f"{label}: child failed (exit {proc.returncode}):\n{err[-4000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    # exact per-process peaks (VmHWM) and sampled tree peaks; the larger of the two per phase
    report["tree_kib"] = {name: memory.peak_kib(*span) for name, span in report["phases"].items()}
    first = "build" if "build" in report["phases"] else "setup"
    report["index_peak_kib"] = max(report["build_peak_kib"], *(report["tree_kib"][p] for p in report["phases"] if p != "generate"))
    report["gen_peak_kib"] = max(report["peak_kib"] if report.get("peak_reset", False) or first == "setup" else 0,
                                 report["tree_kib"].get("generate", 0))  # fmt: skip
    report["whole_peak_kib"] = max(report["index_peak_kib"], report["gen_peak_kib"], report["peak_kib"])
    return report


def span(report: dict, phase: str) -> float:
    a, b = report["phases"][phase]
    return b - a


@dataclass
class Row:
    what: str
    images: int | None = None
    items: str = "-"
    seconds: list[float] = field(default_factory=list)
    projected_s: float | None = None  # seconds projected to the full size (shown instead of the median)
    rate: str = "-"
    peak_mib: float | None = None
    goal: str = "report only"
    met: str = "-"

    def cells(self) -> list[str]:
        if self.projected_s is not None:
            s = f"{self.projected_s:.1f} projected"
        elif self.seconds:
            med = statistics.median(self.seconds)
            s = f"{med:.2f}" + (f" ({min(self.seconds):.2f}-{max(self.seconds):.2f})" if len(self.seconds) > 1 else "")
        else:
            s = "-"
        images = f"{self.images:,}" if self.images else "-"
        peak = f"{self.peak_mib:,.0f}" if self.peak_mib is not None else "-"
        return [self.what, images, self.items, s, self.rate, peak, self.goal, self.met]


COLUMNS = ["what", "index images", "items", "median s (min-max)", "items/s", "peak MiB", "goal", "met?"]
RIGHT_ALIGNED = {"index images", "items", "median s (min-max)", "items/s", "peak MiB"}


def mib(kib: float) -> float:
    return kib / 1024


def code_version() -> str:
    """The commit measured, and whether the sampling package differs from it (it is under active change)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mimic_pipeline"], cwd=root, capture_output=True,
                               text=True).stdout.split("\n")  # fmt: skip
        dirty = [line for line in dirty if line.strip()]
    except OSError:
        return "unknown"
    return f"{head}" + (f" + {len(dirty)} uncommitted file(s) under mimic_pipeline/" if dirty else " (clean)")


def machine_line(load_at_start: tuple[float, float, float]) -> str:
    return (f"machine: {len(os.sched_getaffinity(0))} CPUs ({platform.machine()}), Python {platform.python_version()}, "
            f"numpy {np.__version__}, pyarrow {pa.__version__}, load average {load_at_start[0]:.2f} / "
            f"{load_at_start[1]:.2f} / {load_at_start[2]:.2f} (1/5/15 min) at start; code {code_version()}")  # fmt: skip


def affine_estimate(points: list[tuple[int, float]], n: int) -> float:
    """Seconds for `n` items on the line through two (items, seconds) points: a fixed cost (sampler setup,
    pools, families, worker start) plus a cost per item. A straight proportion would charge the fixed
    cost once per small run's worth of items and overestimate a large run several-fold."""
    (n1, t1), (n2, t2) = points
    per_item = (t2 - t1) / (n2 - n1)
    if per_item <= 0:  # noise at tiny sizes: fall back to the proportion through the larger point
        return t2 * n / n2
    return max(t2 - per_item * n2, 0.0) + per_item * n


def ratio_text(project_rate: float, naive: dict) -> str:
    if naive["items"] == 0:  # the naive sampler found nothing: its rate is below 1 item per its run time
        return f"> {project_rate * naive['seconds']:,.0f}x"
    return f"{project_rate / (naive['items'] / naive['seconds']):,.1f}x"


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small smoke run: 100k images, 10k train items, 1 run, 20 items per compared cell")  # fmt: skip
    ap.add_argument("--runs", type=int, help="runs per measurement, each in a fresh process (default 3; 1 with --quick); "
                    "full training-set runs: see --train-budget-s")
    ap.add_argument("--images", type=int, help=f"OpenImages-scale index images (default {OPENIMAGES_IMAGES:,})")
    ap.add_argument("--train-items", type=int, help=f"training items (default {TRAIN_ITEMS:,}; 10,000 with --quick)")
    ap.add_argument("--max-train-s", type=float, default=180.0,
                    help="if one full training-set run is estimated (from two smaller runs, 1/25 and 4/25 of the items) "
                         "to take longer than this, do not run it: report the smaller runs and project (default 180)")  # fmt: skip
    ap.add_argument("--train-budget-s", type=float, default=150.0,
                    help="full training-set runs: as many of --runs as fit in this many seconds, at least one (default 150)")  # fmt: skip
    ap.add_argument("--compare-per-cell", type=int, help="items per compared cell, both generators (default 100; 20 with --quick)")
    ap.add_argument("--naive-budget-s", type=float,
                    help="time for the naive sampler over all compared cells and both class choices (default 60; 10 with --quick)")  # fmt: skip
    ap.add_argument("--naive-class", choices=["uniform", "present", "both"], default="both",
                    help="naive class choice: uniform over all leaves, among those in the drawn images, or both (default)")  # fmt: skip
    ap.add_argument("--profile", type=int, metavar="ITEMS", nargs="?", const=-1,
                    help="also cProfile one serial training-set generation of ITEMS items (default: 1/10 of --train-items)")  # fmt: skip
    ap.add_argument("--profile-top", type=int, default=30, help="functions shown per profile listing (default 30)")
    ap.add_argument("--workdir", type=Path, help="where the index Parquet files go (default: a temp dir, removed afterwards)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured run
    args = ap.parse_args()
    defaults = {"runs": (1, 3), "images": (100_000, OPENIMAGES_IMAGES), "train_items": (10_000, TRAIN_ITEMS),
                "compare_per_cell": (20, 100), "naive_budget_s": (10.0, 60.0)}  # fmt: skip
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.runs, args.images, args.train_items, args.compare_per_cell) < 1 or args.naive_budget_s <= 0:
        ap.error("--runs, --images, --train-items, --compare-per-cell and --naive-budget-s must be positive")
    if args.profile == -1:
        args.profile = max(1000, args.train_items // 10)
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    if args.child:
        run_child(args.child)
        return

    started = time.perf_counter()
    load_at_start = os.getloadavg()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="generation_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    rows: list[Row] = []
    try:
        log(f"building the synthetic indexes in {workdir} ...")
        t = time.perf_counter()
        tables = openimages_index(args.images, SEED)
        oi_summary = index_summary(tables)
        write_index(workdir / "openimages", tables)
        del tables
        tables = coco_index(COCO_IMAGES, COCO_BOXES, SEED + 1)
        coco_summary = index_summary(tables)
        write_index(workdir / "coco", tables)
        del tables
        index_s = time.perf_counter() - t
        log(f"  built and written in {index_s:.1f} s\n  train index: {oi_summary}\n  eval index: {coco_summary}")
        train_job = {"index": str(workdir / "openimages"), "source": TRAIN_SOURCE, "split": TRAIN_SPLIT}
        eval_job = {"index": str(workdir / "coco"), "source": EVAL_SOURCE, "split": EVAL_SPLIT}

        # -- training set: two smaller sizes first; the line through them estimates one full run --------
        n_full = args.train_items
        small = max(1_000, n_full // 25)
        mid = 4 * small
        scaling: list[tuple[int, float]] = []  # (items, seconds) of the scaling runs
        estimate = None
        train_reports = []
        if mid < n_full:
            for n in (small, mid):
                r = measure_child({**train_job, "kind": "train", "items": n}, "train scaling run")
                scaling.append((n, span(r, "generate")))
                mid_report = r
                log(f"  train scaling run: {n:,} items in {span(r, 'generate'):.2f} s")
            estimate = affine_estimate(scaling, n_full)
            log(f"  -> one {n_full:,}-item run estimated at {estimate:.0f} s")
        if estimate is None or estimate <= args.max_train_s:
            n_measure = n_full
            train_runs = args.runs if estimate is None else max(1, min(args.runs, int(args.train_budget_s // estimate)))
        else:
            n_measure, train_runs = mid, args.runs - 1
            train_reports.append(mid_report)  # the scaling run at `mid` counts as the first measured run
        for run in range(1, train_runs + 1):
            r = measure_child({**train_job, "kind": "train", "items": n_measure}, "train")
            train_reports.append(r)
            log(f"  train run {run}/{train_runs}: {n_measure:,} items in {span(r, 'generate'):.2f} s "
                f"(read {span(r, 'read'):.1f} s, build {span(r, 'build'):.1f} s)")  # fmt: skip

        # -- eval sets --------------------------------------------------------------------------------
        eval_reports = []
        for run in range(1, args.runs + 1):
            r = measure_child({**eval_job, "kind": "eval"}, "eval")
            eval_reports.append(r)
            log(f"  eval run {run}/{args.runs}: {r['items']:,} items in {span(r, 'generate'):.2f} s")

        # -- comparison with the naive rejection sampler: naive first, so the project run validates its items
        modes = ["uniform", "present"] if args.naive_class == "both" else [args.naive_class]
        dump = workdir / "naive_items.json"
        naive = measure_child({**train_job, "kind": "naive", "per_cell": args.compare_per_cell, "budget_s": args.naive_budget_s,
                               "modes": modes, "dump": str(dump)}, "naive")  # fmt: skip
        log(f"  naive: setup {span(naive, 'setup'):.1f} s, sampling {span(naive, 'generate'):.1f} s")
        compare_reports = []
        for run in range(1, args.runs + 1):
            r = measure_child({**train_job, "kind": "compare", "per_cell": args.compare_per_cell,
                               "validate": str(dump) if run == 1 else None}, "compare")  # fmt: skip
            compare_reports.append(r)
            log(f"  project on the compared cells, run {run}/{args.runs}: {span(r, 'generate'):.2f} s")

        profile = None
        if args.profile:
            log(f"  profiling one serial training-set generation of {args.profile:,} items ...")
            profile = measure_child({**train_job, "kind": "profile", "items": args.profile, "top": args.profile_top}, "profile")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- rows -------------------------------------------------------------------------------------------
    t0 = train_reports[0]
    rows.append(Row("build_sampling_index, OpenImages-scale", t0["index_images"], "-",
                    [span(r, "build") for r in train_reports], peak_mib=mib(max(r["index_peak_kib"] for r in train_reports))))  # fmt: skip
    rows.append(Row("build_sampling_index, COCO-style eval", eval_reports[0]["index_images"], "-",
                    [span(r, "build") for r in eval_reports], peak_mib=mib(max(r["index_peak_kib"] for r in eval_reports))))  # fmt: skip

    train_s = [span(r, "generate") for r in train_reports]
    train_peak = mib(max(r["gen_peak_kib"] for r in train_reports))
    med = statistics.median(train_s)
    goal = f"<= {TRAIN_GOAL_S:.0f} s, < {TRAIN_GOAL_MIB / 1024:.0f} GiB"
    scaled = ", ".join(f"{n:,} items {t:.1f} s" for n, t in scaling)
    if n_measure == n_full:
        met = "yes" if med <= TRAIN_GOAL_S and train_peak < TRAIN_GOAL_MIB else "NO"
        runs_note = f" ({len(train_s)} run{'s' if len(train_s) > 1 else ''})" if len(train_s) != args.runs else ""
        rows.append(Row(f"generate_train_sets, {n_full:,} items{runs_note}", t0["index_images"], f"{n_full:,}", train_s,
                        rate=f"{n_full / med:,.0f}", peak_mib=train_peak, goal=goal, met=met))  # fmt: skip
        if scaling:
            notes.append(f"training set: scaling runs ({scaled}) estimated one {n_full:,}-item run at {estimate:.0f} s "
                         f"(measured: {med:.1f} s)"
                         + (f"; {len(train_s)} of --runs {args.runs} full runs fit --train-budget-s {args.train_budget_s:.0f}"
                            if len(train_s) != args.runs else ""))  # fmt: skip
    else:
        projected = affine_estimate([scaling[0], (n_measure, med)], n_full)
        rows.append(Row(f"generate_train_sets, {n_measure:,} items (measured)", t0["index_images"], f"{n_measure:,}",
                        train_s, rate=f"{n_measure / med:,.0f}", peak_mib=train_peak))  # fmt: skip
        met = "NO" if projected > TRAIN_GOAL_S else "? (memory measured smaller)"
        rows.append(Row(f"generate_train_sets, {n_full:,} items (PROJECTED)", t0["index_images"], f"{n_full:,}",
                        projected_s=projected, rate=f"{n_full / projected:,.0f}", goal=goal, met=met))  # fmt: skip
        notes.append(f"PROJECTED: one {n_full:,}-item run was estimated at {estimate:.0f} s, over --max-train-s "
                     f"{args.max_train_s:.0f}, so it was not run: its time is the line through {scaling[0][0]:,} items "
                     f"({scaling[0][1]:.1f} s) and {n_measure:,} items (median {med:.1f} s) extended to {n_full:,} items "
                     "(fixed costs counted once); its peak memory is not measured (the item tables grow with the item "
                     "count), so 'met?' judges the time only. Pass --max-train-s 1000 to measure the full size.")  # fmt: skip
    eval_s = [span(r, "generate") for r in eval_reports]
    n_eval = eval_reports[0]["items"]
    rows.append(Row("generate_eval_sets, 100 items per cell", eval_reports[0]["index_images"], f"{n_eval:,}", eval_s,
                    rate=f"{n_eval / statistics.median(eval_s):,.0f}", peak_mib=mib(max(r["gen_peak_kib"] for r in eval_reports)),
                    goal=f"<= {EVAL_GOAL_S:.0f} s", met="yes" if statistics.median(eval_s) <= EVAL_GOAL_S else "NO"))  # fmt: skip

    # comparison rows, per study and over all four
    names = [f"{t}/{a}" for t, a in COMPARE_STUDIES]
    project_peak = mib(max(r["gen_peak_kib"] for r in compare_reports))
    naive_peak = mib(naive["whole_peak_kib"])
    label = {"uniform": "naive (uniform class)", "present": "naive (class in images)"}
    for study in [*names, "all four"]:
        keys = names if study == "all four" else [study]
        per_run = [sum(r["studies"][k]["seconds"] for k in keys) for r in compare_reports]
        n_items = sum(compare_reports[0]["studies"][k]["items"] for k in keys)
        project_rate = n_items / statistics.median(per_run)
        rows.append(Row(f"project: {study}", t0["index_images"], f"{n_items:,}", per_run, rate=f"{project_rate:,.0f}",
                        peak_mib=project_peak))  # fmt: skip
        for mode in modes:
            agg = {f: sum(naive["modes"][mode][k][f] for k in keys) for f in ("requested", "items", "tries", "seconds",
                                                                                "cells_unfinished", "cells")}  # fmt: skip
            acc = agg["items"] / max(agg["tries"], 1)
            unfinished = f", {agg['cells_unfinished']}/{agg['cells']} cells short" if agg["cells_unfinished"] else ""
            rows.append(Row(f"{label[mode]}: {study} (acc. {acc:.1e}{unfinished})", naive["index_images"],
                            f"{agg['items']:,} of {agg['requested']:,}", [agg["seconds"]],
                            rate=f"{agg['items'] / agg['seconds']:,.1f}", peak_mib=naive_peak))  # fmt: skip
        for mode in modes:
            agg = {f: sum(naive["modes"][mode][k][f] for k in keys) for f in ("items", "seconds")}
            rows.append(Row(f"ratio project / {label[mode]}: {study}", rate=ratio_text(project_rate, agg), goal="-"))

    # -- notes ------------------------------------------------------------------------------------------
    notes.append(f"train index: {oi_summary}")
    notes.append(f"eval index: {coco_summary}")
    notes.append(f"synthetic indexes built and written as Parquet in {index_s:.1f} s (not timed); every run is a fresh "
                 f"process: Parquet read {statistics.median(span(r, 'read') for r in train_reports):.1f} s, then "
                 "build_sampling_index, then generation, each timed on its own")  # fmt: skip
    notes.append("peak MiB: the larger of the process's exact peak (VmHWM, reset between phases) and the summed PSS of "
                 "it and its forked workers sampled every 0.1 s (PSS counts the index pages the workers share once); "
                 "generation rows: the generation phase, with the index resident; build rows: Parquet read + build")  # fmt: skip
    whole = mib(max(r["whole_peak_kib"] for r in train_reports))
    baseline = mib(max(r["baseline_kib"] for r in train_reports))
    gen = train_reports[-1]
    notes.append(f"training run's generation phase: main process peak (VmHWM) {mib(gen['peak_kib']):,.0f} MiB, "
                 f"sampled peak of it plus its workers (PSS) {mib(gen['tree_kib'].get('generate', 0)):,.0f} MiB")
    notes.append(f"the training run's whole process peaks at {whole:,.0f} MiB (index build included); the interpreter "
                 f"and imports alone take {baseline:,.0f} MiB of every peak")  # fmt: skip
    per_task = "; ".join(f"{task} {n:,} items {s:.1f} s ({n / max(s, 1e-9):,.0f}/s)"
                         for task, (n, s) in train_reports[len(train_reports) // 2]["per_task"].items())  # fmt: skip
    cpu = statistics.median(r["cpu_s"] for r in train_reports)
    notes.append(f"training run per task (one run): {per_task}; CPU {cpu:.1f} s over {med:.1f} s wall "
                 f"= {cpu / med:.2f} cores busy of {len(os.sched_getaffinity(0))}")  # fmt: skip
    notes.append(f"comparison: {args.compare_per_cell} items per cell on the same cells; the project runs in one "
                 f"process there (each study is under its parallel threshold), median of {args.runs}; the naive sampler "
                 f"runs once, {naive['budget_per_cell_s']:.2f} s at most per cell and class choice (setup: per-image "
                 f"dicts built in {span(naive, 'setup'):.1f} s, not in its items/s; 'cells short': cells left short of items when "
                 f"their time or tries ran out); ratio = project items/s / naive items/s, "
                 f"'> N x' where the naive sampler found no item at all")  # fmt: skip
    notes.append("naive class choice: 'uniform class' picks the counted class uniformly over all leaves, as the project does; "
                 "'class in images' picks it among the classes in the drawn images - faster, but its answers follow class "
                 "frequency (mostly the few commonest classes), which the project's answers do not")  # fmt: skip
    v = compare_reports[0].get("validation", {})
    if "error" in v:
        notes.append(f"validating the naive items with the project's item_problems failed: {v['error']}")
    elif v:
        notes.append(f"the project's validity engine checked {v['checked']:,} naive items: {v['invalid']} invalid"
                     + (f" (e.g. {v['examples']})" if v["invalid"] else ""))  # fmt: skip

    print(machine_line(load_at_start))
    print(f"{args.runs} run(s) per measurement, each in a fresh process; seconds time the named call only")
    print()
    table = [r.cells() for r in rows]
    print(plain_table(COLUMNS, table, RIGHT_ALIGNED))
    if args.markdown:
        print()
        print(markdown_table(COLUMNS, table, RIGHT_ALIGNED))
    print()
    for note in notes:
        print(f"- {note}")
    if profile:
        print()
        how = "serially (one process)" if profile["serial"] else "as configured (forked workers invisible to cProfile)"
        print(f"profile: generate_train_sets, {profile['items']:,} items, {span(profile, 'generate'):.1f} s under cProfile, "
              f"run {how}:")  # fmt: skip
        print(profile["profile"])
    print(f"total wall time {time.perf_counter() - started:.1f} s (index generation {index_s:.1f} s); "
          f"load average at end {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
