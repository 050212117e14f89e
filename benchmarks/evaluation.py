"""Benchmark evaluation throughput: items answered per second, batch 1 vs the default batch, pooling 1 vs 4.

Two geometries, each through exactly the prediction path the `predictions` asset uses
(`model_answerer`: images, chat template, batched greedy generation), all in one process so the
ratios are side by side (one warm-up batch, then the median of `--runs` timed passes):

* **demo**: a trained checkpoint (default `data/checkpoints/full_ft`, made by `mimic demo`) on 32 px
  shapes: 16 vision tokens per image (17 with the separator). Batch 1 vs the default batch, and
  pooling x4 at the default batch.
* **long**: the same tiny widths, untrained, at 216 px with 8 px patches: 27 x 27 = 729 vision tokens
  per image, the sequence length LLaVA-OneVision 0.5B feeds its language model (SigLIP at 384 px,
  14 px patches). Pooling 1 vs 4 vs 8. Untrained, so every answer runs to `--long-new-tokens`.

Each row also splits the time into the vision side (image preprocessing + vision tower +
projector + pooling, `adapter._vision`) and the rest (the language model's prefill and decoding),
because pooling shortens only what the language model reads. Goals: >= 3x from batching, >= 2x
from pooling x4.

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

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from report import markdown_table, plain_table  # sibling module: scripts run as benchmarks/X.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mimic_pipeline.core.models.adapters import load_adapter  # noqa: E402
from mimic_pipeline.core.models.sequence import Variant  # noqa: E402
from mimic_pipeline.core.prediction import model_answerer  # noqa: E402
from mimic_pipeline.core.training.data import ImageCache  # noqa: E402

BATCH_GOAL, POOL_GOAL = 3.0, 2.0
COLUMNS = ["geometry", "configuration", "batch", "variant", "items", "median s", "min-max s", "items/s", "vision share",
           "ratio", "goal", "met?"]  # fmt: skip
RIGHT = {"batch", "items", "median s", "min-max s", "items/s", "vision share", "ratio"}


def vision_timer(adapter) -> list[float]:
    """Wrap `adapter._vision` so each call adds its seconds to the returned list."""
    spent: list[float] = []
    inner = adapter._vision

    def timed_vision(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    adapter._vision = timed_vision
    return spent


def measure(adapter, items, configs, runs: int, max_new_tokens: int) -> dict[str, tuple[list[float], float]]:
    """{configuration: (seconds per pass, share of the time on the vision side)}."""
    images = ImageCache()
    spent = vision_timer(adapter)
    out = {}
    for name, batch, variant in configs:
        answer = model_answerer(adapter, variant, images, max_new_tokens)
        answer(items.slice(0, batch))  # warm-up (and images into the cache)
        times, vision = [], []
        for _ in range(runs):
            spent.clear()
            started = time.perf_counter()
            for start in range(0, items.num_rows, batch):
                answer(items.slice(start, batch))
            times.append(time.perf_counter() - started)
            vision.append(sum(spent) / times[-1])
        out[name] = (times, statistics.median(vision))
    return out


def rows_for(geometry: str, items, configs, results, comparisons) -> list[list[str]]:
    """One row per configuration; `comparisons` maps a configuration to (baseline configuration, goal)."""
    rate = {name: items.num_rows / statistics.median(t) for name, (t, _) in results.items()}
    rows = []
    for name, batch, variant in configs:
        times, vision_share = results[name]
        ratio, goal, met = "1.00x", "", ""
        if name in comparisons:
            against, target = comparisons[name]
            r = rate[name] / rate[against]
            ratio = f"{r:.2f}x vs {against}"
            if target:
                goal, met = f">= {target}x", "yes" if r >= target else "NO"
        rows.append([geometry, name, str(batch), variant.name, str(items.num_rows), f"{statistics.median(times):.2f}",
                     f"{min(times):.2f}-{max(times):.2f}", f"{rate[name]:.1f}", f"{100 * vision_share:.0f}%", ratio, goal, met])  # fmt: skip
    return rows


def long_sequence_adapter(tmp: Path):
    """An untrained tiny LLaVA-OneVision at 216 px / 8 px patches: 729 vision tokens per image."""
    from mimic_pipeline.core.models.tiny import TinyModelConfig, build_tiny_checkpoint
    from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY

    leaves = [c for children in DEFAULT_TAXONOMY.values() for c in children]
    build_tiny_checkpoint(tmp / "long", leaves, list(DEFAULT_TAXONOMY), TinyModelConfig(image_size=216, max_positions=16384))
    return load_adapter(tmp / "long")


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="data/checkpoints/full_ft")
    ap.add_argument("--items-file", default="data/datasets/eval/counting.parquet")
    ap.add_argument("--items", type=int, default=128, help="items per pass, demo geometry (default 128)")
    ap.add_argument("--batch", type=int, default=32, help="the default batch (default 32)")
    ap.add_argument("--long-items", type=int, default=16, help="items per pass, long geometry (default 16)")
    ap.add_argument("--long-batch", type=int, default=8)
    ap.add_argument("--long-new-tokens", type=int, default=4, help="answer tokens, long geometry (a count is 1-2 + EOS)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    for path in (args.checkpoint, args.items_file):
        if not Path(path).exists():
            ap.error(f"{path} does not exist: run `mimic demo` first (or pass --checkpoint / --items-file)")
    all_items = pq.read_table(args.items_file)
    # multi-image items only for the long geometry: a one-image item takes the anyres path (5 crops)
    multi = all_items.filter(pc.greater(pc.list_value_length(all_items.column("image_ids")), 1))

    items = all_items.slice(0, args.items)
    configs = [("batch 1", 1, Variant()), ("default batch", args.batch, Variant()),
               ("default batch, pooling x4", args.batch, Variant(pool=4))]  # fmt: skip
    results = measure(load_adapter(args.checkpoint), items, configs, args.runs, 16)
    rows = rows_for("demo: 32 px, 17 tokens/image", items, configs, results,
                    {"default batch": ("batch 1", BATCH_GOAL), "default batch, pooling x4": ("default batch", POOL_GOAL)})  # fmt: skip
    if not args.skip_long:
        long_items = multi.slice(0, args.long_items)
        configs = [("pooling x1", args.long_batch, Variant()), ("pooling x4", args.long_batch, Variant(pool=4)),
                   ("pooling x8", args.long_batch, Variant(pool=8))]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            results = measure(long_sequence_adapter(Path(tmp)), long_items, configs, args.runs, args.long_new_tokens)
        n_images = statistics.mean(len(ids) for ids in long_items.column("image_ids").to_pylist())
        rows += rows_for(f"long: 216 px, 729 tokens/image ({n_images:.1f} images/item)", long_items, configs, results,
                         {"pooling x4": ("pooling x1", POOL_GOAL), "pooling x8": ("pooling x1", None)})  # fmt: skip
    print(f"checkpoint {args.checkpoint}; items of {args.items_file}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} CPUs; median of {args.runs} passes")  # fmt: skip
    print(plain_table(COLUMNS, rows, RIGHT))
    if args.markdown:
        print()
        print(markdown_table(COLUMNS, rows, RIGHT))


if __name__ == "__main__":
    main()
