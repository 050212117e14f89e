"""Layer-wise attention statistics: equal to a direct computation from the model's attention weights,
normalized, zero cross-image share in masked layers, and measured without output_attentions.

One tiny random LLaVA-OneVision (3 LM layers; 4 query heads over 2 kv heads) in float32; items with 2-4
random 32 px images and one single-image item (the longer "anyres" path), so batches are left-padded.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from mimic_pipeline.core.attention import ATTENTION_STATS_SCHEMA, VISION_TARGETS, attention_statistics
from mimic_pipeline.core.models.adapters import ModelInput, load_adapter
from mimic_pipeline.core.models.masking import LayerMask
from mimic_pipeline.core.models.tiny import TinyModelConfig, build_tiny_checkpoint
from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY

LEAVES = [c for children in DEFAULT_TAXONOMY.values() for c in children]
PARENTS = list(DEFAULT_TAXONOMY)
LAYERS = 3
SMALL = TinyModelConfig(vision_hidden=32, text_hidden=32, text_layers=LAYERS, text_heads=4, text_kv_heads=2)
QUESTION = "How many squares are there in these images? Answer with a number."


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


ITEMS = [ModelInput([image(10 * i + j) for j in range(n)], QUESTION) for i, n in enumerate((2, 3, 1, 4))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("attn") / "model", LEAVES, PARENTS, SMALL)


@pytest.fixture
def adapter(checkpoint):
    return load_adapter(checkpoint)


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["layer"], r["kind"], r["target"]): r for r in rows}


def reference(adapter, items) -> dict[tuple, float]:
    """The same shares straight from `output_attentions=True` of the eager model, one batch, plain loops."""
    batch = adapter.encode(items)
    adapter.hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = adapter.forward(batch, output_attentions=True).attentions
    finally:
        adapter.hf_model.set_attn_implementation("sdpa")
    assert len(attentions) == LAYERS
    seg, valid = batch.segment_ids, batch.attention_mask.bool()
    n_images = int(seg.max()) + 1
    expected = {}
    for layer, weights in enumerate(attentions):
        probs = weights.mean(1)  # mean over heads: (B, S, S)
        vision, final = defaultdict(float), defaultdict(float)
        n_vision = n_final = 0
        for b in range(seg.shape[0]):
            text_keys = valid[b] & (seg[b] < 0)
            for i in range(seg.shape[1]):
                if seg[b, i] >= 0:
                    p = probs[b, i]
                    vision["own_image"] += p[seg[b] == seg[b, i]].sum().item()
                    vision["other_images"] += p[(seg[b] >= 0) & (seg[b] != seg[b, i])].sum().item()
                    vision["text"] += p[text_keys].sum().item()
                    n_vision += 1
            p = probs[b, -1]  # left padding: the last position is the final token
            for k in range(n_images):
                final[f"image_{k}"] += p[seg[b] == k].sum().item()
            final["text"] += p[text_keys].sum().item()
            n_final += 1
        expected.update({(layer, "vision_query", t): v / n_vision for t, v in vision.items()})
        expected.update({(layer, "final_text", t): v / n_final for t, v in final.items()})
    return expected


def test_statistics_equal_a_direct_computation_from_the_attention_weights(adapter):
    expected = reference(adapter, ITEMS)
    # batches of 3 + 1: other padding than the reference's single batch, and sums carried across batches
    rows = attention_statistics(adapter, ITEMS, batch_size=3)
    got = by_key(rows)
    assert set(got) == set(expected)
    for key, share in expected.items():
        assert got[key]["share"] == pytest.approx(share, abs=1e-5), key
    n_vision = sum(len(item.images) for item in ITEMS)  # vision queries: every image token of every item
    assert got[(0, "vision_query", "own_image")]["n"] > n_vision
    assert {r["n"] for r in rows if r["kind"] == "final_text"} == {len(ITEMS)}
    assert ATTENTION_STATS_SCHEMA.names == ["checkpoint", "layer", "kind", "target", "share", "n"]
    assert adapter.hf_model.config.get_text_config()._attn_implementation == "sdpa"  # restored


def test_shares_sum_to_one_per_layer_and_kind(adapter):
    rows = attention_statistics(adapter, ITEMS, batch_size=4, n_final=2)
    totals = defaultdict(float)
    for r in rows:
        totals[(r["layer"], r["kind"])] += r["share"]
    assert set(totals) == {(layer, kind) for layer in range(LAYERS) for kind in ("vision_query", "final_text")}
    assert all(t == pytest.approx(1.0, abs=1e-6) for t in totals.values()), totals  # float32 softmax
    targets = {r["target"] for r in rows if r["kind"] == "final_text"}
    assert targets == {"image_0", "image_1", "image_2", "image_3", "text"}
    assert {r["n"] for r in rows if r["kind"] == "final_text"} == {2 * len(ITEMS)}
    assert {r["target"] for r in rows if r["kind"] == "vision_query"} == set(VISION_TARGETS)


@pytest.mark.parametrize("mode", ["block", "dense"])
def test_masked_layer_has_no_cross_image_attention(adapter, mode):
    adapter.use_layer_mask(LayerMask(layers=[LAYERS - 1], mode=mode))
    got = by_key(attention_statistics(adapter, ITEMS, batch_size=4))
    assert got[(LAYERS - 1, "vision_query", "other_images")]["share"] == 0.0
    for layer in range(LAYERS - 1):
        assert got[(layer, "vision_query", "other_images")]["share"] > 0.0
    # the wrapper handed back the layer-mask implementation it found
    from mimic_pipeline.core.models.masking import ATTENTION_NAME

    assert adapter.hf_model.config.get_text_config()._attn_implementation == ATTENTION_NAME


def test_measuring_leaves_the_output_alone_and_never_requests_attention_weights(adapter):
    seen = []
    record = lambda module, args, kwargs, out: seen.append((kwargs, out))  # noqa: E731
    hook = adapter.hf_model.register_forward_hook(record, with_kwargs=True)
    try:
        attention_statistics(adapter, ITEMS, batch_size=4)
    finally:
        hook.remove()
    (kwargs, out), = seen
    assert not kwargs.get("output_attentions")
    assert out.attentions is None
    with torch.no_grad():
        plain = adapter.forward(adapter.encode(ITEMS), use_cache=False, logits_to_keep=1).logits
    torch.testing.assert_close(out.logits, plain, rtol=0, atol=0)
