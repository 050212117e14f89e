"""The embedded tiny model: the real LLaVA-OneVision architecture, sized for a CPU.

A SigLIP vision tower, the LLaVA-OneVision projector and image-newline token, and a Qwen2 language
model, built from a config (no download) with the project's own word-level tokenizer. It is saved
with `save_pretrained` as an ordinary Hugging Face checkpoint directory (model, tokenizer, image
processor), so everything downstream loads it exactly as it loads a downloaded
`llava-onevision-qwen2-0.5b-ov-hf`.

Sizes follow notes/tiny-model.md: 32 px images with 8 px patches give 16 + 1 (newline) tokens per
image in multi-image items and 36 in single-image items (LLaVA-OneVision's "anyres" path); the grid
pinpoints are scaled to the image size the same way the 0.5B model's are to 384 px.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from ..text import pluralize
from .vocabulary import IMAGE, build_tokenizer


@dataclass(frozen=True)
class TinyModelConfig:
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention, as in Qwen2 / LLaVA-OV 0.5B (14 heads, 2 kv heads)
    max_positions: int = 1024
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def grid_pinpoints(image_size: int) -> list[list[int]]:
    """The anyres grid, scaled to the image size as the 0.5B model's is to 384 px (1x1 up to 2x2 tiles)."""
    return [[image_size * i, image_size * j] for i in (1, 2) for j in (1, 2)]


def tiny_llava_config(cfg: TinyModelConfig, vocab_size: int, image_token_id: int, pad_token_id: int) -> LlavaOnevisionConfig:
    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
    )  # fmt: skip
    text = Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=False, pad_token_id=pad_token_id,
    )  # fmt: skip
    return LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id, video_token_id=image_token_id,
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=grid_pinpoints(cfg.image_size), tie_word_embeddings=False,
    )  # fmt: skip


def tiny_image_processor(cfg: TinyModelConfig) -> LlavaOnevisionImageProcessorPil:
    s = cfg.image_size
    return LlavaOnevisionImageProcessorPil(
        size={"height": s, "width": s}, image_grid_pinpoints=grid_pinpoints(s)
    )


def _tie_plurals(model, tokenizer, names: list[str]) -> None:
    """Start each plural with its singular's input embedding ("squares" = "square"), as a pretrained
    LM would have them close: counting questions name the plural, images show the singular."""
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        for name in names:
            singular = tokenizer(name, add_special_tokens=False)["input_ids"]
            plural = tokenizer(pluralize(name), add_special_tokens=False)["input_ids"]
            if len(singular) == len(plural) and singular != plural:
                table[plural] = table[singular]


def build_tiny_checkpoint(
    out_dir: str | Path, category_names: list[str], parent_names: list[str], cfg: TinyModelConfig = TinyModelConfig()
) -> Path:
    """Write a randomly initialised tiny LLaVA-OneVision (model, tokenizer, image processor) to `out_dir`."""
    tokenizer = build_tokenizer(category_names, parent_names)
    torch.manual_seed(cfg.seed)
    config = tiny_llava_config(cfg, len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE), tokenizer.pad_token_id)
    model = LlavaOnevisionForConditionalGeneration(config)
    _tie_plurals(model, tokenizer, [*category_names, *parent_names])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tiny_image_processor(cfg).save_pretrained(out_dir)
    return out_dir
