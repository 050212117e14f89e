"""Benchmark one language-model attention layer under the layer-wise mask: full causal vs dense vs block.

Geometry of LLaVA-OneVision 0.5B's language model (Qwen2: hidden 896, 14 query heads, 2 key/value
heads, head dim 64) on one item of `--images` images x `--tokens-per-image` vision tokens plus
`--text-tokens` text tokens (5 before the first image, 2 before each image, the rest after the last:
a question). Random q/k/v (not timed) go through exactly the calls the model makes:

* full causal: transformers' `sdpa_attention_forward` with no mask, i.e. SDPA `is_causal=True`, GQA native;
* dense mask:  `sdpa_attention_forward` with the (1, 1, S, S) boolean mask of `dense_layer_mask`;
* block mask:  `block_attention`: one batched causal SDPA call over the image blocks plus one masked call
  for the text queries. Building its layout (`MaskLayout`, once per forward, shared by every masked
  layer) is timed on its own row.

Each row is the median of `--runs` timed calls after one warm-up call (`--backward`: forward + backward).

FLOPs are counted analytically as (query, key) pairs the kernel computes x 4 x head_dim x query heads:
QK^T and PV each take one multiply-add (2 FLOPs) per pair and per head dimension. Pairs computed:
full causal S(S+1)/2 (a causal kernel skips the upper triangle), dense S^2 (with an explicit mask the
kernel computes every pair and masks afterwards), block sum_i L_i(L_i+1)/2 over images plus
n_text x S for the text queries (a masked rectangle over all keys). Softmax and masking are not
counted. Goals for the block mask: <= 0.2x the FLOPs and <= 0.35x the wall time of full causal.

    .venv/bin/python benchmarks/attention_mask.py                        # CPU, float32, 10 x 729 + 60
    .venv/bin/python benchmarks/attention_mask.py --device cuda --dtype bfloat16 --runs 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from report import markdown_table, plain_table  # sibling module: scripts run as benchmarks/X.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mimic_pipeline.core.models.masking import MaskLayout, block_attention, dense_layer_mask  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 14, 2, 64  # LLaVA-OneVision 0.5B (Qwen2-0.5B)
FLOPS_GOAL, WALL_GOAL, STEP_GOAL = 0.2, 0.35, 0.75
SEED = 20240612
COLUMNS = ["attention layer", "tokens", "pairs (M)", "GFLOPs", "FLOPs vs causal", "median ms", "min-max ms",
           "wall vs causal", "goal", "met?"]  # fmt: skip
STEP_RIGHT = {"tokens / item", "median ms", "min-max ms", "vs no mask"}
RIGHT_ALIGNED = {"tokens", "pairs (M)", "GFLOPs", "FLOPs vs causal", "median ms", "min-max ms", "wall vs causal"}


@dataclass
class Row:
    name: str
    tokens: int
    times_s: list[float]
    pairs: int | None = None  # None: no attention FLOPs (layout build)
    goal: str = ""
    met: str = ""

    def flops(self) -> float:
        return self.pairs * 4 * HEAD_DIM * HEADS

    def cells(self, causal: Row) -> list[str]:
        med = statistics.median(self.times_s) * 1e3
        return [
            self.name, f"{self.tokens:,}",
            "-" if self.pairs is None else f"{self.pairs / 1e6:,.2f}",
            "-" if self.pairs is None else f"{self.flops() / 1e9:,.1f}",
            "-" if self.pairs is None else f"{self.flops() / causal.flops():.3f}x",
            f"{med:,.1f}", f"{min(self.times_s) * 1e3:,.1f}-{max(self.times_s) * 1e3:,.1f}",
            f"{med / (statistics.median(causal.times_s) * 1e3):.3f}x", self.goal, self.met,
        ]  # fmt: skip


def segment_ids(images: int, tokens_per_image: int, text_tokens: int) -> torch.Tensor:
    """(1, S): a 5-token prefix, 2 text tokens before each image, the remaining text as the question."""
    before_each = 2 if text_tokens >= 5 + 2 * images else 0
    prefix = min(5, text_tokens - before_each * images)
    seg = [-1] * prefix
    for k in range(images):
        seg += [-1] * before_each + [k] * tokens_per_image
    seg += [-1] * (text_tokens - prefix - before_each * images)
    return torch.tensor([seg])


def pairs_computed(seg: torch.Tensor, images: int, tokens_per_image: int) -> dict[str, int]:
    S = seg.shape[1]
    n_text = int((seg < 0).sum())
    return {"causal": S * (S + 1) // 2, "dense": S * S,
            "block": images * tokens_per_image * (tokens_per_image + 1) // 2 + n_text * S}  # fmt: skip


def timed(fn, runs: int, device: str) -> list[float]:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


STEP_COLUMNS = ["training step (tiny model)", "geometry", "tokens / item", "median ms", "min-max ms", "vs no mask",
                "goal", "met?"]  # fmt: skip


def training_step_rows(args: argparse.Namespace) -> list[list[str]]:
    """One optimizer step of the tiny LLaVA-OneVision (LM + projector trained, tower frozen) on one batch,
    without the mask and with it on layers >= L/2 (dense reference and block), at two geometries:
    the shapes world's (32 px: 17 tokens per image) and the paper's (216 px / 8 px patches: 27 x 27 = 729
    tokens per image, so the LM sees as many vision tokens as LLaVA-OV 0.5B does)."""
    import tempfile

    from PIL import Image

    from mimic_pipeline.core.models.adapters import ModelInput, load_adapter
    from mimic_pipeline.core.models.masking import LayerMask
    from mimic_pipeline.core.models.tiny import TinyModelConfig, build_tiny_checkpoint
    from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY

    leaves = [c for children in DEFAULT_TAXONOMY.values() for c in children]
    rows = []
    for label, size, batch in (("shapes world, 32 px", 32, 16), ("paper tokens, 216 px", 216, 1)):
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_checkpoint(Path(tmp) / "m", leaves, list(DEFAULT_TAXONOMY), TinyModelConfig(image_size=size))
            adapter = load_adapter(Path(tmp) / "m", device=args.device)
        gen = torch.Generator().manual_seed(SEED)
        images = [Image.fromarray(torch.randint(0, 255, (size, size, 3), generator=gen, dtype=torch.uint8).numpy())
                  for _ in range(args.images)]  # fmt: skip
        items = [ModelInput(images, "How many squares are there in these images? Answer with a number.", "3")] * batch
        for p_name, p in adapter.model.named_parameters():
            p.requires_grad_(not p_name.startswith("model.vision_tower"))
        optimizer = torch.optim.AdamW([p for p in adapter.model.parameters() if p.requires_grad], lr=1e-4)
        encoded = adapter.encode(items, with_answers=True)
        tokens = encoded.attention_mask.shape[1]

        def step():
            loss = adapter.forward(adapter.encode(items, with_answers=True)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = {}
        for mode in (None, "dense", "block"):
            adapter.use_layer_mask(None if mode is None else LayerMask(mode=mode))
            times[mode] = timed(step, args.runs, args.device)
        base = statistics.median(times[None])
        for mode, name in ((None, "no mask"), ("dense", "mask L/2.., dense"), ("block", "mask L/2.., block")):
            med = statistics.median(times[mode])
            ratio = med / base
            goal = f"<= {STEP_GOAL}x" if mode == "block" else ""
            met = ("yes" if ratio <= STEP_GOAL else "NO") if mode == "block" else ""
            rows.append([name, f"{label}, batch {batch}, {args.images} images", f"{tokens:,}", f"{med * 1e3:,.1f}",
                         f"{min(times[mode]) * 1e3:,.1f}-{max(times[mode]) * 1e3:,.1f}", f"{ratio:.3f}x", goal, met])  # fmt: skip
    return rows


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed calls per row, after one warm-up (default 5)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--images", type=int, default=10, help="images in the item (default 10)")
    ap.add_argument("--tokens-per-image", type=int, default=729, help="vision tokens per image (default 729: 27 x 27)")
    ap.add_argument("--text-tokens", type=int, default=60, help="text tokens in the item (default 60)")
    ap.add_argument("--backward", action="store_true", help="time forward + backward instead of forward only")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--skip-training-step", action="store_true", help="only the attention-layer table")
    args = ap.parse_args()
    if min(args.runs, args.images, args.tokens_per_image, args.text_tokens) < 1:
        ap.error("--runs, --images, --tokens-per-image and --text-tokens must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible to torch")
    return args


def main() -> None:
    args = parse_args()
    started, load = time.perf_counter(), os.getloadavg()
    device, dtype = args.device, getattr(torch, args.dtype)
    seg = segment_ids(args.images, args.tokens_per_image, args.text_tokens).to(device)
    S = seg.shape[1]
    pairs = pairs_computed(seg, args.images, args.tokens_per_image)

    gen = torch.Generator(device=device).manual_seed(SEED)
    q = torch.randn(1, HEADS, S, HEAD_DIM, generator=gen, device=device, dtype=dtype, requires_grad=args.backward)
    k, v = (torch.randn(1, KV_HEADS, S, HEAD_DIM, generator=gen, device=device, dtype=dtype, requires_grad=args.backward)
            for _ in range(2))  # fmt: skip
    module = torch.nn.Module()  # what the attention functions read from the Qwen2 attention layer
    module.num_key_value_groups, module.is_causal, module.training = HEADS // KV_HEADS, True, False
    scaling = HEAD_DIM**-0.5
    layout = MaskLayout(seg)
    dense = dense_layer_mask(seg)

    calls = {
        "causal": lambda: sdpa_attention_forward(module, q, k, v, None, scaling=scaling)[0],
        "dense": lambda: sdpa_attention_forward(module, q, k, v, dense, scaling=scaling)[0],
        "block": lambda: block_attention(module, q, k, v, layout, scaling=scaling)[0],
    }

    def run(name):
        def step():
            out = calls[name]()
            if args.backward:
                out.float().square().mean().backward()
                for t in (q, k, v):
                    t.grad = None
            return out

        return step

    with torch.no_grad() if not args.backward else torch.enable_grad():
        outputs = {name: fn() for name, fn in calls.items()}
    max_diff = (outputs["block"].float() - outputs["dense"].float()).abs().max().item()
    del outputs

    rows = [Row("full causal (SDPA is_causal)", S, timed(run("causal"), args.runs, device), pairs["causal"])]
    rows.append(Row("dense mask (SDPA + bool mask)", S, timed(run("dense"), args.runs, device), pairs["dense"]))
    block = Row("block mask (per-image blocks)", S, timed(run("block"), args.runs, device), pairs["block"],
                goal=f"<= {FLOPS_GOAL}x FLOPs, <= {WALL_GOAL}x wall")  # fmt: skip
    rows.append(block)
    rows.append(Row("  block layout build (once per forward)", S, timed(lambda: MaskLayout(seg), args.runs, device)))
    steps = [] if args.skip_training_step else training_step_rows(args)

    causal = rows[0]
    flops_ratio = block.flops() / causal.flops()
    wall_ratio = statistics.median(block.times_s) / statistics.median(causal.times_s)
    block.met = "yes" if flops_ratio <= FLOPS_GOAL and wall_ratio <= WALL_GOAL else "NO"

    where = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"machine: {where}, {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}, load average "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) at start; code {code_version()}")  # fmt: skip
    print(f"one attention layer, {HEADS} query heads / {KV_HEADS} kv heads / head dim {HEAD_DIM}, {args.dtype} on {device}; "
          f"{args.images} images x {args.tokens_per_image} tokens + {args.text_tokens} text = {S:,} tokens; "
          f"{'forward + backward (FLOPs: forward)' if args.backward else 'forward only'}, median of {args.runs} runs after a warm-up")  # fmt: skip
    print()
    table = [r.cells(causal) for r in rows]
    print(plain_table(COLUMNS, table, RIGHT_ALIGNED))
    if args.markdown:
        print()
        print(markdown_table(COLUMNS, table, RIGHT_ALIGNED))
    print()
    print("- FLOPs = (query, key) pairs computed x 4 x head_dim x query heads (QK^T and PV, one multiply-add each); "
          "causal counts S(S+1)/2 pairs, dense S^2, block sum L(L+1)/2 over images + n_text x S")  # fmt: skip
    print(f"- block vs dense output: max |difference| {max_diff:.2e} ({args.dtype})")
    if steps:
        print()
        print(plain_table(STEP_COLUMNS, steps, STEP_RIGHT))
        if args.markdown:
            print()
            print(markdown_table(STEP_COLUMNS, steps, STEP_RIGHT))
        print("- one AdamW step (forward, loss on the answer, backward, update) of the tiny model, "
              "float32; the mask on layers >= L/2 (2 of 4)")  # fmt: skip
    print(f"total wall time {time.perf_counter() - started:.1f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
