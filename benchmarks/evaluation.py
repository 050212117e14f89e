"""Benchmark evaluation throughput: items answered per second, batch 1 vs the default batch, pooling 1 vs 4.

A trained checkpoint (default `data/checkpoints/full_ft`, made by `mimic demo`) answers eval items
(default: counting, the task with the most cells) through exactly the prediction path the
`predictions` asset uses (`model_answerer`: images, chat template, batched greedy generation). Each
configuration answers the same `--items` items; one warm-up batch, then the median of `--runs`
timed passes, all in one process so the ratios are side by side. Goals: >= 3x from batching,
>= 2x from pooling x4.

    .venv/bin/python benchmarks/evaluation.py
    .venv/bin/python benchmarks/evaluation.py --checkpoint data/checkpoints/lora_masked --items 64 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from report import markdown_table, plain_table  # sibling module: scripts run as benchmarks/X.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mimic_pipeline.core.models.adapters import load_adapter  # noqa: E402
from mimic_pipeline.core.models.sequence import Variant  # noqa: E402
from mimic_pipeline.core.prediction import model_answerer  # noqa: E402
from mimic_pipeline.core.training.data import ImageCache  # noqa: E402

BATCH_GOAL, POOL_GOAL = 3.0, 2.0
COLUMNS = ["configuration", "batch", "variant", "items", "median s", "min-max s", "items/s", "ratio", "goal", "met?"]
RIGHT = {"batch", "items", "median s", "min-max s", "items/s", "ratio"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="data/checkpoints/full_ft")
    ap.add_argument("--items-file", default="data/datasets/eval/counting.parquet")
    ap.add_argument("--items", type=int, default=128, help="items per pass (default 128)")
    ap.add_argument("--batch", type=int, default=32, help="the default batch (default 32)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    for path in (args.checkpoint, args.items_file):
        if not Path(path).exists():
            ap.error(f"{path} does not exist: run `mimic demo` first (or pass --checkpoint / --items-file)")
    adapter = load_adapter(args.checkpoint)
    items = pq.read_table(args.items_file).slice(0, args.items)
    images = ImageCache()

    def timed(batch: int, variant: Variant) -> list[float]:
        answer = model_answerer(adapter, variant, images)
        answer(items.slice(0, batch))  # warm-up (and images into the cache)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            for start in range(0, items.num_rows, batch):
                answer(items.slice(start, batch))
            times.append(time.perf_counter() - started)
        return times

    configs = [("batch 1, no pooling", 1, Variant()), ("default batch, no pooling", args.batch, Variant()),
               ("default batch, pooling x4", args.batch, Variant(pool=4))]  # fmt: skip
    results = {name: timed(batch, variant) for name, batch, variant in configs}
    rate = {name: items.num_rows / statistics.median(t) for name, t in results.items()}
    batch_ratio = rate[configs[1][0]] / rate[configs[0][0]]
    pool_ratio = rate[configs[2][0]] / rate[configs[1][0]]
    rows = []
    for (name, batch, variant), ratio, goal, met in zip(
        configs, ["1.00x", f"{batch_ratio:.2f}x vs batch 1", f"{pool_ratio:.2f}x vs no pooling"],
        ["", f">= {BATCH_GOAL}x", f">= {POOL_GOAL}x"],
        ["", "yes" if batch_ratio >= BATCH_GOAL else "NO", "yes" if pool_ratio >= POOL_GOAL else "NO"],
    ):  # fmt: skip
        t = results[name]
        rows.append([name, str(batch), variant.name, str(items.num_rows), f"{statistics.median(t):.2f}",
                     f"{min(t):.2f}-{max(t):.2f}", f"{rate[name]:.1f}", ratio, goal, met])  # fmt: skip
    print(f"checkpoint {args.checkpoint}; {items.num_rows} items of {args.items_file}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} CPUs; median of {args.runs} passes")  # fmt: skip
    print(plain_table(COLUMNS, rows, RIGHT))
    if args.markdown:
        print()
        print(markdown_table(COLUMNS, rows, RIGHT))


if __name__ == "__main__":
    main()
