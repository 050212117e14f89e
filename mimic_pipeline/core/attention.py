"""Where attention goes, layer by layer: the study's attention analysis of a checkpoint.

Per language-model layer, over a sample of items:

* ``vision_query``: of the attention that vision-token queries give (mean over heads, then over every
  vision query of every item; padding excluded), the share on keys of their own image
  (``own_image``), of the item's other images (``other_images``) and on text (``text``).
* ``final_text``: of the attention that the last ``n_final`` non-padding tokens of each item give (the
  token that produces the answer), the share on the item's first image (``image_0``), second
  (``image_1``), ... and on text. The mean runs over the final queries of all items, and an item with
  fewer images contributes 0 to the images it lacks, so that the shares of a layer sum to 1; to compare
  image positions at one image count, pass items with the same number of images.

How. ``output_attentions=True`` would hold every layer's (B, H, S, S) weights until the forward ends.
Instead, for one forward per batch, the language model is switched to a wrapper attention function:
it receives each layer's query and key *after* the rotary embedding, recomputes that layer's
probabilities one item and one chunk of queries at a time, reduces them to the sums above, drops
them, and then hands the call unchanged to the implementation the model had (SDPA, eager, or the
layer-wise mask), so the model's output is its own.

The probabilities are those the model uses: softmax(q k^T * scaling) in float32 under the layer's
mask, built from the token layout: causal + padding in ordinary layers, the reference
``dense_layer_mask`` in layers masked by the layer-wise mask (the block implementation the model runs
agrees with it numerically, tests/test_masking.py). A masked layer therefore shows exactly zero
cross-image share.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
from collections.abc import Iterator, Sequence

import pyarrow as pa
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .models.adapters import ModelInput, VisionLanguageAdapter
from .models.masking import dense_layer_mask, layer_mask_of
from .models.sequence import Variant

ATTENTION_STATS_SCHEMA = pa.schema([
    ("checkpoint", pa.string()), ("layer", pa.int32()), ("kind", pa.string()), ("target", pa.string()),
    ("share", pa.float64()), ("n", pa.int64()),
])  # fmt: skip

VISION_TARGETS = ("own_image", "other_images", "text")
STATS_NAME = "mimic_attention_stats"  # prefix of the registered wrapper names (one per wrapped implementation)
CHUNK_ELEMENTS = 1 << 24  # probabilities held at once per layer: heads x query chunk x keys (64 MiB in float32)


# ---------------------------------------------------------------------------------------------
# Accumulating the statistics of one layer call
# ---------------------------------------------------------------------------------------------


class _Collector:
    """Running sums per layer, fed by the wrapper; the layout of the batch in flight is set per forward."""

    def __init__(self, layer_of: dict[int, int], masked: set[int], n_final: int):
        self.layer_of = layer_of  # id(self_attn module) -> language-model layer index
        self.masked = masked
        self.n_final = n_final
        self.vision: dict[int, torch.Tensor] = {}  # layer -> float64 (3,) sums over vision queries
        self.final: dict[int, torch.Tensor] = {}  # layer -> float64 (n_images + 1,) sums, text last
        self.n_vision: dict[int, int] = {}
        self.n_final_queries: dict[int, int] = {}
        self.segment_ids: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None

    def observe(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float | None, sliding_window) -> None:
        layer = self.layer_of.get(id(module))
        if layer is None:  # not a language-model layer (no other module should reach this function)
            return
        if sliding_window is not None:
            raise NotImplementedError(f"layer {layer} uses sliding-window attention, which the statistics do not model")
        B, H, S, d = query.shape
        if self.segment_ids is None or (B, S) != tuple(self.segment_ids.shape) or key.shape[2] != S:
            raise RuntimeError(f"layer {layer}: attention over {B} x {S} queries and {key.shape[2]} keys does not "
                               "match the batch being measured (a cached or partial forward?)")  # fmt: skip
        scaling = d**-0.5 if scaling is None else scaling  # SDPA's default
        groups = H // key.shape[1]
        vision_sum = torch.zeros(3, dtype=torch.float64)
        final_sum = torch.zeros(1, dtype=torch.float64)  # grows to the item's image count (+ text)
        n_vision = n_final = 0
        segment_ids, valid = self.segment_ids.to(query.device), self.valid.to(query.device)
        for b in range(B):
            keep = valid[b]
            seg = segment_ids[b, keep]
            n = seg.numel()
            q = query[b][:, keep].float()
            # grouped-query attention: query head h reads kv head h // groups (transformers' repeat_kv)
            k = key[b][:, keep].float().repeat_interleave(groups, dim=0)
            allowed = dense_layer_mask(seg[None])[0, 0] if layer in self.masked else _causal(n, q.device)
            n_images = int(seg.max()) + 1 if n else 0
            column = torch.where(seg >= 0, seg, n_images)  # key -> its image, text in the last column
            vision_rows = (seg >= 0).nonzero().squeeze(1)
            final_rows = torch.arange(max(n - self.n_final, 0), n, device=q.device)
            for rows, probs in _probabilities(q, k, allowed, scaling, vision_rows):
                own = seg[None, :] == seg[rows][:, None]
                is_text = seg < 0
                vision_sum += torch.stack([
                    (probs * own).sum(), (probs * (~own & ~is_text)).sum(), probs[:, is_text].sum()
                ]).double().cpu()  # fmt: skip
            for _, probs in _probabilities(q, k, allowed, scaling, final_rows):
                per_target = probs.new_zeros(n_images + 1).index_add_(0, column, probs.sum(0)).double().cpu()
                final_sum = _add_padded(final_sum, per_target)
            n_vision += vision_rows.numel()
            n_final += final_rows.numel()
        self.vision[layer] = self.vision.get(layer, torch.zeros(3, dtype=torch.float64)) + vision_sum
        self.final[layer] = _add_padded(self.final.get(layer, torch.zeros(1, dtype=torch.float64)), final_sum)
        self.n_vision[layer] = self.n_vision.get(layer, 0) + n_vision
        self.n_final_queries[layer] = self.n_final_queries.get(layer, 0) + n_final

    def rows(self) -> list[dict]:
        out = []
        for layer in sorted(self.vision):
            n = self.n_vision[layer]
            if n:
                for target, total in zip(VISION_TARGETS, self.vision[layer].tolist()):
                    out.append({"layer": layer, "kind": "vision_query", "target": target, "share": total / n, "n": n})
            n = self.n_final_queries[layer]
            if n:
                totals = self.final[layer].tolist()  # images in order, text last
                targets = [f"image_{i}" for i in range(len(totals) - 1)] + ["text"]
                for target, total in zip(targets, totals):
                    out.append({"layer": layer, "kind": "final_text", "target": target, "share": total / n, "n": n})
        return out


def _causal(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def _probabilities(q, k, allowed, scaling, rows) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, head-mean probabilities (len(rows), n_keys)) for the chosen queries, a bounded chunk at a time."""
    H, n = q.shape[0], k.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(H * n, 1))
    for start in range(0, rows.numel(), step):
        chunk = rows[start : start + step]
        scores = (q[:, chunk] @ k.transpose(1, 2)) * scaling
        # every query may attend at least to itself, so no row is fully masked
        scores = scores.masked_fill(~allowed[chunk], float("-inf"))
        yield chunk, scores.softmax(-1).mean(0)


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of two (images..., text) vectors of different image counts: the text entry stays last."""
    width = max(a.numel(), b.numel())

    def widen(v):
        out = torch.zeros(width, dtype=torch.float64)
        out[: v.numel() - 1] = v[:-1]
        out[-1] = v[-1]
        return out

    return widen(a) + widen(b)


# ---------------------------------------------------------------------------------------------
# Installing the wrapper for one measurement
# ---------------------------------------------------------------------------------------------

_RUN: contextvars.ContextVar[_Collector | None] = contextvars.ContextVar("mimic_attention_stats", default=None)


def _wrapper(previous: str):
    """The attention function that measures, then runs the model's own implementation `previous`."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        run = _RUN.get()
        if run is not None:
            with torch.no_grad():
                run.observe(module, query, key, scaling, kwargs.get("sliding_window"))
        # "eager" is not in the registry: models fall back to their own module's eager function
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        real = ALL_ATTENTION_FUNCTIONS.get_interface(previous, eager)
        return real(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    return attention


@contextlib.contextmanager
def _measuring(model, collector: _Collector) -> Iterator[None]:
    """Switch the language model to the measuring wrapper; restore its implementation afterwards."""
    config = model.config.get_text_config()
    previous = config._attn_implementation
    if not previous or previous.startswith(STATS_NAME):
        raise RuntimeError(f"cannot measure attention under implementation {previous!r} (nested measurement?)")
    # one name per wrapped implementation, so the model keeps receiving the mask that implementation expects
    name = f"{STATS_NAME}_{re.sub(r'[^A-Za-z0-9_]', '_', previous)}"
    AttentionInterface.register(name, _wrapper(previous))
    if previous in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[previous])
    model.set_attn_implementation({"text_config": name})
    token = _RUN.set(collector)
    try:
        yield
    finally:
        _RUN.reset(token)
        model.set_attn_implementation({"text_config": previous})


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def attention_statistics(
    adapter: VisionLanguageAdapter,
    inputs: Sequence[ModelInput],
    batch_size: int = 8,
    *,
    n_final: int = 1,
    variant: Variant = Variant(),
) -> list[dict]:
    """Rows {layer, kind, target, share, n} (module docstring) over `inputs`, one forward per batch.

    The checkpoint's layer-wise mask, if the adapter has one, is honoured: its masked layers are measured
    under the mask they run with.
    """
    if n_final < 1:
        raise ValueError(f"n_final must be >= 1, got {n_final}")
    model = adapter.hf_model
    layers = model.get_decoder().layers  # the language model's decoder layers (LLaVA-OneVision and Qwen2-VL)
    mask = layer_mask_of(model)
    collector = _Collector(
        layer_of={id(layer.self_attn): i for i, layer in enumerate(layers)},
        masked=set(mask.layers) if mask is not None else set(),
        n_final=n_final,
    )  # fmt: skip
    with torch.no_grad(), _measuring(model, collector):
        for start in range(0, len(inputs), batch_size):
            batch = adapter.encode(inputs[start : start + batch_size], variant)
            collector.segment_ids, collector.valid = batch.segment_ids, batch.attention_mask.bool()
            # no cache and only the last position's logits: nothing but the statistics is wanted
            adapter.forward(batch, use_cache=False, logits_to_keep=1)
    return collector.rows()
