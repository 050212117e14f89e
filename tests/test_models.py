"""The tiny model, its tokenizer, the adapters over both architectures, and the sequence-length tools."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mimic_pipeline.core.models.adapters import AdapterError, ModelInput, Qwen2VLAdapter, load_adapter, resolve_device
from mimic_pipeline.core.models.sequence import Variant, apply_to_images, pixel_control, pool_tokens, stitch
from mimic_pipeline.core.models.tiny import TinyModelConfig, build_tiny_checkpoint
from mimic_pipeline.core.models.vocabulary import build_tokenizer
from mimic_pipeline.core.sampling.templates import TEMPLATES
from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY

LEAVES = [c for children in DEFAULT_TAXONOMY.values() for c in children]
PARENTS = list(DEFAULT_TAXONOMY)
SMALL = TinyModelConfig(vision_hidden=32, text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1)


def image(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", LEAVES, PARENTS, SMALL)


# -- tokenizer ---------------------------------------------------------------------------------


def test_every_template_and_name_tokenizes_without_unknown_words():
    tok = build_tokenizer(LEAVES, PARENTS)
    texts = [t.format(what="squares and circles", in_total=" in total", images="these images",
                      every="every one of these images", parent="polygon", parents="polygons")
             for templates in TEMPLATES.values() for t in templates]  # fmt: skip
    texts += ["square, triangle and hexagon", "twenty-one", "100", "yes", "no", "round shapes"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text.lower()


def test_answers_are_short_and_round_trip_exactly():
    tok = build_tokenizer(LEAVES, PARENTS)
    ids = tok("heart, ring", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["\u2581heart", ",", "\u2581ring"]
    assert tok.decode(ids) == "heart, ring"
    assert len(tok("12", add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_renders_one_placeholder_per_image():
    tok = build_tokenizer(LEAVES, PARENTS)
    content = [{"type": "image"}] * 3 + [{"type": "text", "text": "How many stars?"}]
    ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[:5] == ["<|im_start|>", "user", "<image>", "<image>", "<image>"]
    assert tokens[-3:] == ["<|im_end|>", "<|im_start|>", "assistant"]


# -- the tiny checkpoint and the LLaVA-OneVision adapter ------------------------------------------


def test_tiny_checkpoint_is_an_ordinary_hugging_face_directory(tiny):
    files = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= files
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "llava_onevision"
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["text_config"]["model_type"] == "qwen2"
    assert config["vision_feature_select_strategy"] == "full"
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")


def test_vision_token_counts_are_read_from_the_model(tiny):
    adapter = load_adapter(tiny)
    items = [ModelInput([image(1)], "How many stars are there in this image?", "2"),
             ModelInput([image(2), image(3), image(4)], "Which kinds of polygon appear in these images?", "square"),
             ModelInput([], "Is there a star in this image? Answer yes or no.", "no")]  # fmt: skip
    batch = adapter.encode(items, with_answers=True)
    # 32 px, 8 px patches: 16 tokens + newline per image of a multi-image item; a one-image item takes
    # LLaVA-OneVision's anyres path: 16 base + 16 from the grid view + 4 row newlines = 36
    assert batch.image_token_counts == [[36], [17, 17, 17], []]
    for row, counts in zip(batch.segment_ids.tolist(), batch.image_token_counts):
        assert [row.count(k) for k in range(len(counts))] == counts
        assert sum(1 for s in row if s >= 0) == sum(counts)
    # left padding: the longest row starts at 0, every row ends with its answer's end-of-turn token
    assert batch.attention_mask[:, -1].tolist() == [1, 1, 1]
    eos = adapter.tokenizer.eos_token_id
    assert batch.labels[:, -1].tolist() == [eos, eos, eos]
    answer = adapter.answer_ids("2")
    assert batch.labels[0][batch.labels[0] != -100].tolist() == answer
    # the image tokens hold the projected vision features, not the placeholder's embedding
    embeds = batch.model_inputs["inputs_embeds"]
    placeholder = adapter.hf_model.get_input_embeddings().weight[adapter.image_token_id]
    assert not torch.allclose(embeds[1][batch.segment_ids[1] == 0][0], placeholder)


def test_pooling_shortens_each_image_and_the_pixel_control_does_not(tiny):
    adapter = load_adapter(tiny)
    items = [ModelInput([image(1), image(2)], "How many stars are there in these images?")]
    assert adapter.encode(items, Variant(pool=4)).image_token_counts == [[5, 5]]  # ceil(17 / 4)
    assert adapter.encode(items, Variant(pool=8)).image_token_counts == [[3, 3]]
    assert adapter.encode(items, Variant(pixel_control=4)).image_token_counts == [[17, 17]]
    assert adapter.encode(items, Variant(stitch=True)).image_token_counts[0] == [len(
        adapter.encode([ModelInput([stitch([image(1), image(2)])], "q")]).segment_ids[0].ge(0).nonzero())]  # fmt: skip


def test_batched_generation_equals_one_item_at_a_time(tiny):
    adapter = load_adapter(tiny)
    items = [ModelInput([image(5)], "How many stars are there in this image? Answer with a number."),
             ModelInput([image(6), image(7), image(8), image(9)], "Which kinds of symbol appear in these images?")]  # fmt: skip
    together = adapter.generate(items, max_new_tokens=4)
    alone = [adapter.generate([item], max_new_tokens=4)[0] for item in items]
    assert together == alone


def test_loss_counts_only_answer_tokens(tiny):
    adapter = load_adapter(tiny)
    item = ModelInput([image(1), image(2)], "How many stars are there in these images?", "3")
    batch = adapter.encode([item], with_answers=True)
    logits = adapter.forward(batch).logits[0, :-1]
    targets = batch.labels[0, 1:]
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(adapter.forward(batch).loss, expected, atol=1e-6)
    assert int(keep.sum()) == len(adapter.answer_ids("3"))


def test_loading_errors_name_the_file_and_the_fix(tmp_path, tiny):
    with pytest.raises(AdapterError, match="no such checkpoint directory"):
        load_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no config.json"):
        load_adapter(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(AdapterError, match="model_type 'bert' is not supported"):
        load_adapter(tmp_path / "other")
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(AdapterError, match="base model .* has no config.json"):
        load_adapter(tmp_path / "orphan")


# -- Qwen2-VL --------------------------------------------------------------------------------------


def build_tiny_qwen2_vl(out):
    """A tiny random Qwen2-VL with the project tokenizer (its special tokens added) saved as a directory."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_tokenizer(LEAVES, PARENTS)
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]})
    tok.chat_template = tok.chat_template.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")}
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "bos_token_id": tok.pad_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "patch_size": 8,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3},
        image_token_id=ids["<|image_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], video_token_id=ids["<|image_pad|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                             max_pixels=64 * 64).save_pretrained(out)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "model")


def test_qwen2_vl_adapter_expands_each_image_to_its_grid(qwen):
    adapter = load_adapter(qwen)
    assert isinstance(adapter, Qwen2VLAdapter)
    items = [ModelInput([image(1)], "How many stars?", "1"), ModelInput([image(2), image(3)], "How many stars?", "2")]
    batch = adapter.encode(items, with_answers=True)
    # 32 px / 8 px patches = 4 x 4 patches, merged 2 x 2 -> 4 tokens per image
    assert batch.image_token_counts == [[4], [4, 4]]
    assert float(adapter.forward(batch).loss.detach()) > 0
    assert len(adapter.generate(items, max_new_tokens=3)) == 2


def test_qwen2_vl_refuses_pooling_with_the_reason(qwen):
    adapter = load_adapter(qwen)
    with pytest.raises(AdapterError, match="2-D rotary grid"):
        adapter.encode([ModelInput([image(1)], "q")], Variant(pool=2))
    assert "2-D rotary grid" in adapter.unsupported(Variant(pool=2))
    assert adapter.unsupported(Variant(pixel_control=4)) is None and adapter.unsupported(Variant()) is None


def test_device_and_dtype_resolve_to_the_cpu_in_float32_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == ("cpu", torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == ("cuda", torch.bfloat16)
    assert resolve_device("cpu", "auto") == ("cpu", torch.float32)
    assert resolve_device("cuda:1", "float16") == ("cuda:1", torch.float16)
    with pytest.raises(ValueError, match="dtype 'int8': use auto, float32, bfloat16 or float16"):
        resolve_device("cpu", "int8")


# -- sequence-length tools ----------------------------------------------------------------------


def test_pool_tokens_averages_runs_and_keeps_a_partial_last_run():
    x = torch.arange(10, dtype=torch.float32).repeat(2, 1).T  # (10 tokens, 2 dims)
    pooled = pool_tokens(x, 4)
    assert pooled[:, 0].tolist() == [1.5, 5.5, 8.5]  # mean(0..3), mean(4..7), mean(8, 9)
    assert torch.equal(pool_tokens(x, 1), x)


def test_pixel_control_loses_detail_but_keeps_the_size():
    checker = Image.fromarray((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    blurred = pixel_control(checker, 4)
    assert blurred.size == (32, 32)
    assert np.asarray(blurred).std() < 0.2 * np.asarray(checker).std()
    assert pixel_control(checker, 1) is checker


def test_stitch_pastes_images_in_reading_order():
    tiles = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(1, 6)]
    canvas = stitch(tiles)
    assert canvas.size == (24, 16)  # 5 images: 3 columns, 2 rows
    pixels = np.asarray(canvas)
    assert [int(pixels[4, 4 + 8 * c, 0]) for c in range(3)] == [40, 80, 120]
    assert [int(pixels[12, 4 + 8 * c, 0]) for c in range(3)] == [160, 200, 0]
    assert len(apply_to_images(tiles, Variant(stitch=True))) == 1


def test_variant_names_round_trip_and_bad_values_are_refused():
    for v in (Variant(), Variant(pool=4), Variant(pixel_control=8), Variant(pool=2, stitch=True)):
        assert Variant.parse(v.name) == v
    with pytest.raises(ValueError, match="choose one of 1, 2, 4, 8"):
        Variant(pool=3)
    with pytest.raises(ValueError, match="alternatives"):
        Variant(pool=2, pixel_control=2)
    with pytest.raises(ValueError, match="unknown variant"):
        Variant.parse("pool4-blur")
