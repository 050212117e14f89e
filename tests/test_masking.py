"""The layer-wise attention mask: the dense reference, block == dense, isolation, fallbacks, peft.

Models are tiny random LLaVA-OneVision (SigLIP + Qwen2) and Qwen2-VL configs built here, in float32 with
fixed seeds; both use grouped-query attention (4 query heads, 2 key/value heads). Most tests feed
`inputs_embeds` + `attention_mask` to the *full* model rather than to its language model: that is what
callers do, and it exercises `enable_layer_mask` on the whole model (the vision tower must keep its
own attention) while letting each test choose any token layout without building pixel inputs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mimic_pipeline.core.models.masking import (
    ATTENTION_NAME,
    LayerMask,
    LayerMaskError,
    MaskLayout,
    block_attention,
    default_masked_layers,
    dense_layer_mask,
    disable_layer_mask,
    enable_layer_mask,
    layer_mask_attention,
    layer_mask_context,
    layer_mask_of,
)

HIDDEN, LAYERS, VOCAB, IMAGE_TOKEN = 32, 4, 64, 63
MASKED = (2, 3)  # the default second half of 4 layers


def tiny_llava() -> LlavaOnevisionForConditionalGeneration:
    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=8)  # fmt: skip
    text = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                                  video_token_index=62, image_grid_pinpoints=[[16, 16], [16, 32]],
                                  vision_feature_select_strategy="full")  # fmt: skip
    return LlavaOnevisionForConditionalGeneration(config).eval()


def tiny_qwen2vl() -> Qwen2VLForConditionalGeneration:
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=None, eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=HIDDEN, num_heads=2, patch_size=4),
        image_token_id=IMAGE_TOKEN, video_token_id=62, vision_start_token_id=61, vision_end_token_id=60,
    )  # fmt: skip
    return Qwen2VLForConditionalGeneration(config).eval()


BUILDERS = {"llava_onevision": tiny_llava, "qwen2_vl": tiny_qwen2vl}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request):
    return BUILDERS[request.param]()


@contextlib.contextmanager
def installed(model, mode="block", layers=None):
    enable_layer_mask(model, LayerMask(layers=layers, mode=mode))
    try:
        yield
    finally:
        disable_layer_mask(model)


def layout(items: list[list[tuple[str, int]]], padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """segment_ids and attention_mask for items written as [("t", n_text), ("i", n_image_tokens), ...]."""
    rows = []
    for item in items:
        seg, image = [], 0
        for kind, n in item:
            seg += [-1] * n if kind == "t" else [image] * n
            image += kind == "i"
        rows.append(seg)
    S = max(map(len, rows))
    segment_ids = torch.full((len(rows), S), -1)
    attention_mask = torch.zeros(len(rows), S, dtype=torch.long)
    for b, seg in enumerate(rows):
        span = slice(S - len(seg), S) if padding_side == "left" else slice(0, len(seg))
        segment_ids[b, span] = torch.tensor(seg)
        attention_mask[b, span] = 1
    return segment_ids, attention_mask


# 3 images (two of them adjacent, lengths 5/5/3) vs 1 image vs none: three block lengths, uneven padding
MIXED = [
    [("t", 2), ("i", 5), ("t", 1), ("i", 5), ("i", 3), ("t", 2)],
    [("t", 3), ("i", 4), ("t", 4)],
    [("t", 7)],
]


def forward_logits(model, segment_ids, attention_mask, embeds):
    with layer_mask_context(segment_ids, attention_mask):
        return model(inputs_embeds=embeds, attention_mask=attention_mask).logits


# ---------------------------------------------------------------------------------------------
# The reference mask and the layout
# ---------------------------------------------------------------------------------------------


def test_dense_layer_mask_by_hand():
    segment_ids = torch.tensor([
        [-1, 0, 0, 1, -1],   # text, image 0 (2 tokens), image 1 (1 token), text
        [-1, -1, 0, 0, -1],  # left padding at position 0
        [-1, 0, 0, -1, -1],  # right padding at position 4
    ])  # fmt: skip
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    expected = torch.tensor([
        [[1, 0, 0, 0, 0],
         [0, 1, 0, 0, 0],    # image 0 sees only itself, causally
         [0, 1, 1, 0, 0],
         [0, 0, 0, 1, 0],    # image 1 does not see image 0 or the text before it
         [1, 1, 1, 1, 1]],   # text sees everything before it
        [[0, 0, 0, 0, 0],    # a padding query has no valid key
         [0, 1, 0, 0, 0],
         [0, 0, 1, 0, 0],
         [0, 0, 1, 1, 0],
         [0, 1, 1, 1, 1]],   # never the padding key
        [[1, 0, 0, 0, 0],
         [0, 1, 0, 0, 0],
         [0, 1, 1, 0, 0],
         [1, 1, 1, 1, 0],
         [1, 1, 1, 1, 0]],   # right padding: a text query, the padding key itself excluded
    ], dtype=torch.bool)[:, None]  # fmt: skip
    mask = dense_layer_mask(segment_ids, attention_mask)
    assert mask.dtype == torch.bool and mask.shape == (3, 1, 5, 5)
    assert torch.equal(mask, expected)


def test_layout_rejects_bad_segments():
    with pytest.raises(ValueError, match="contiguous"):
        MaskLayout(torch.tensor([[0, 0, -1, 0]]))
    with pytest.raises(ValueError, match="padding"):
        MaskLayout(torch.tensor([[0, 0, -1]]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="mode"):
        LayerMask(mode="sparse")
    assert default_masked_layers(24) == range(12, 24)


def test_layout_moves_to_the_model_device_once():
    lay = MaskLayout(*layout(MIXED))
    assert lay.to(torch.device("cpu")) is lay
    moved = lay.to(torch.device("meta"))  # stands in for an accelerator
    assert moved is lay.to(torch.device("meta")) and moved.inverse.is_meta and moved.blocks[0][1].is_meta
    assert (moved.batch, moved.seq_len) == (lay.batch, lay.seq_len)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_block_attention_equals_dense_on_tensors(padding_side):
    """The kernel alone, GQA included: outputs and gradients agree with SDPA under the dense mask."""
    torch.manual_seed(1)
    segment_ids, attention_mask = layout(MIXED, padding_side)
    B, S = segment_ids.shape
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    q = torch.randn(B, 4, S, 8, requires_grad=True)
    k = torch.randn(B, 2, S, 8, requires_grad=True)
    v = torch.randn(B, 2, S, 8, requires_grad=True)
    lay = MaskLayout(segment_ids, attention_mask)
    out, weights = block_attention(module, q, k, v, lay, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, dense_layer_mask(segment_ids, attention_mask), scaling=0.3)
    assert weights is None and out.shape == ref.shape == (B, S, 4, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad((out * ref.detach()).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * ref.detach()).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_block_equals_dense_on_model(model, padding_side):
    segment_ids, attention_mask = layout(MIXED, padding_side)
    torch.manual_seed(2)
    embeds = torch.randn(*segment_ids.shape, HIDDEN)
    with torch.no_grad():
        plain = model(inputs_embeds=embeds, attention_mask=attention_mask).logits
        with installed(model, "block"):
            assert model.config.get_text_config()._attn_implementation == ATTENTION_NAME
            assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower is left alone
            block = forward_logits(model, segment_ids, attention_mask, embeds)
        with installed(model, "dense"):
            dense = forward_logits(model, segment_ids, attention_mask, embeds)
    torch.testing.assert_close(block, dense, atol=1e-5, rtol=1e-5)
    valid = attention_mask.bool()
    # the mask is really applied: image items change after their first image, the pure-text item does not
    assert (block[:2][valid[:2]] - plain[:2][valid[:2]]).abs().max() > 1e-3
    torch.testing.assert_close(block[2][valid[2]], plain[2][valid[2]], atol=1e-5, rtol=1e-5)
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # restored by disable


def test_text_only_batch_is_ordinary_attention(model):
    segment_ids, attention_mask = layout([[("t", 6)], [("t", 3)]])
    torch.manual_seed(9)
    embeds = torch.randn(*segment_ids.shape, HIDDEN)
    with torch.no_grad():
        plain = model(inputs_embeds=embeds, attention_mask=attention_mask).logits
        for mode in ("block", "dense"):
            with installed(model, mode):
                masked = forward_logits(model, segment_ids, attention_mask, embeds)
            valid = attention_mask.bool()
            torch.testing.assert_close(masked[valid], plain[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["block", "dense"])
def test_images_are_isolated_in_masked_layers(model, mode):
    """Perturbing image 0's layer input leaves images 1 and 2 bit-identical in a masked layer only."""
    segment_ids, _ = layout([[("t", 2), ("i", 4), ("t", 1), ("i", 4), ("i", 4), ("t", 2)]])  # equal lengths: one batched call
    S = segment_ids.shape[1]
    img = [(segment_ids[0] == k).nonzero().squeeze(1) for k in range(3)]
    text_before, text_after = torch.arange(2), torch.arange(S)[(segment_ids[0] < 0) & (torch.arange(S) > 2)]
    lm = model.get_decoder()
    torch.manual_seed(3)
    x = torch.randn(1, S, HIDDEN)
    x2 = x.clone()
    x2[0, img[0]] += torch.randn(len(img[0]), HIDDEN)
    position_embeddings = lm.rotary_emb(x, torch.arange(S)[None])

    def attention(layer, hidden):
        out, _ = lm.layers[layer].self_attn(hidden_states=hidden, position_embeddings=position_embeddings, attention_mask=None)
        return out[0]

    with torch.no_grad(), installed(model, mode), layer_mask_context(segment_ids):
        masked_a, masked_b = attention(MASKED[0], x), attention(MASKED[0], x2)
        plain_a, plain_b = attention(0, x), attention(0, x2)
    for j in (1, 2):
        assert torch.equal(masked_a[img[j]], masked_b[img[j]])
        assert not torch.allclose(plain_a[img[j]], plain_b[img[j]])
    assert not torch.allclose(masked_a[img[0]], masked_b[img[0]])
    assert not torch.allclose(masked_a[text_after], masked_b[text_after])  # text still reads every image
    assert torch.equal(masked_a[text_before], masked_b[text_before])


def test_unmasked_layers_equal_plain_sdpa(model):
    segment_ids, attention_mask = layout(MIXED)
    torch.manual_seed(4)
    embeds = torch.randn(*segment_ids.shape, HIDDEN)
    with torch.no_grad():
        plain = model(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        with installed(model, "block"), layer_mask_context(segment_ids, attention_mask):
            masked = model(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    for i in range(MASKED[0] + 1):  # embeddings and the outputs of the unmasked layers 0 and 1
        assert torch.equal(plain[i], masked[i])
    assert not torch.allclose(plain[MASKED[0] + 1], masked[MASKED[0] + 1])


def test_decode_step_equals_plain_sdpa(model):
    """A one-token query over a longer cache is ordinary SDPA in a masked layer, inside the context or not."""
    segment_ids, attention_mask = layout(MIXED)
    B, S = segment_ids.shape
    module = model.get_decoder().layers[MASKED[0]].self_attn
    torch.manual_seed(5)
    q, k, v = torch.randn(B, 4, 1, 8), torch.randn(B, 2, S + 1, 8), torch.randn(B, 2, S + 1, 8)
    mask = torch.cat([attention_mask, torch.ones(B, 1, dtype=torch.long)], 1).bool()[:, None, None, :]
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    with installed(model, "block"):
        out_outside, _ = layer_mask_attention(module, q, k, v, mask, scaling=0.3)
        with layer_mask_context(segment_ids, attention_mask):
            out_inside, _ = layer_mask_attention(module, q, k, v, mask, scaling=0.3)
    assert torch.equal(out_outside, expected) and torch.equal(out_inside, expected)


def test_generation_block_matches_dense(model):
    segment_ids, attention_mask = layout(MIXED, "left")
    torch.manual_seed(6)
    embeds = torch.randn(*segment_ids.shape, HIDDEN)
    results = {}
    for mode in ("block", "dense"):
        if hasattr(model.model, "rope_deltas"):
            model.model.rope_deltas = None  # Qwen2-VL keeps 3-D rope offsets between generate calls
        with torch.no_grad(), installed(model, mode), layer_mask_context(segment_ids, attention_mask):
            results[mode] = model.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=3,
                                           do_sample=False, output_logits=True, return_dict_in_generate=True)  # fmt: skip
    block, dense = results["block"], results["dense"]
    assert block.sequences.shape == (3, 3)
    torch.testing.assert_close(block.logits[0], dense.logits[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(block.sequences, dense.sequences)


def test_missing_or_wrong_layout_raises(model):
    segment_ids, attention_mask = layout(MIXED)
    embeds = torch.randn(*segment_ids.shape, HIDDEN)
    with torch.no_grad(), installed(model, "block", layers=[1]):
        with pytest.raises(LayerMaskError, match=r"layer 1 is a masked layer.*layer_mask_context"):
            model(inputs_embeds=embeds, attention_mask=attention_mask)
        with pytest.raises(LayerMaskError, match="batch 3 x 18 tokens"), layer_mask_context(segment_ids, attention_mask):
            model(inputs_embeds=embeds[:, :-1], attention_mask=attention_mask[:, :-1])
        assert layer_mask_of(model) == LayerMask(layers=(1,), mode="block")
    with pytest.raises(ValueError, match="outside"):
        enable_layer_mask(model, LayerMask(layers=[LAYERS]))
    assert layer_mask_of(model) is None


def test_llava_with_pixels_end_to_end():
    """Real image features through the vision tower; segment ids read from the expanded input ids."""
    model = tiny_llava()
    per_image = (16 // 8) ** 2 + 1  # multi-image items: base patches + the image-newline token
    t, img = [5, 6, 7], [IMAGE_TOKEN] * per_image
    input_ids = torch.tensor([[*t, *img, 8, *img, 9], [1, *t, 8, *img, *img]])  # two adjacent images
    attention_mask = torch.tensor([[1] * 15, [0] + [1] * 14])
    segment_ids = torch.full_like(input_ids, -1)
    for b in range(2):
        positions = (input_ids[b] == IMAGE_TOKEN).nonzero().squeeze(1)
        segment_ids[b, positions] = torch.arange(len(positions)) // per_image
    torch.manual_seed(7)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=torch.randn(4, 3, 16, 16),
                  image_sizes=torch.tensor([[16, 16]] * 4), batch_num_images=torch.tensor([2, 2]))  # fmt: skip
    logits = {}
    for mode in ("block", "dense"):
        with torch.no_grad(), installed(model, mode), layer_mask_context(segment_ids, attention_mask):
            logits[mode] = model(**inputs).logits
    torch.testing.assert_close(logits["block"], logits["dense"], atol=1e-5, rtol=1e-5)


def test_peft_lora_model_trains_through_the_mask(model):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")  # fmt: skip
    peft_model = get_peft_model(model, lora)
    try:
        lora_names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        assert lora_names and all("language_model" in n for n in lora_names)  # the vision tower is not adapted
        segment_ids, attention_mask = layout(MIXED, "right")
        torch.manual_seed(8)
        embeds = torch.randn(*segment_ids.shape, HIDDEN)
        results = {}
        for mode in ("block", "dense"):
            peft_model.zero_grad()
            with installed(peft_model, mode):
                logits = forward_logits(peft_model, segment_ids, attention_mask, embeds)
            logits[attention_mask.bool()].square().mean().backward()
            grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
            results[mode] = logits.detach(), grads
        torch.testing.assert_close(results["block"][0], results["dense"][0], atol=1e-5, rtol=1e-5)
        for name in lora_names:
            torch.testing.assert_close(results["block"][1][name], results["dense"][1][name], atol=1e-5, rtol=1e-4)
        assert any(g.abs().sum() > 0 for g in results["block"][1].values())
    finally:
        peft_model.unload()  # the module-scoped base model goes back to its plain layers
