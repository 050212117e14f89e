"""One interface over Hugging Face vision-language models: batch multi-image items, generate, train.

`load_adapter(path)` reads an ordinary checkpoint directory with plain `from_pretrained`: the
embedded tiny model, a downloaded `llava-onevision-qwen2-0.5b-ov-hf`, a Qwen2-VL, or a directory
holding a peft adapter (its `adapter_config.json` names the base). The adapter then

- renders each item with the model's own chat template (one image part per image, the question
  as text; the answer as the assistant turn when training),
- expands every image placeholder to that image's vision-token count as read from the model (a
  one-image LLaVA-OneVision item takes the "anyres" path and has more tokens than an image of a
  multi-image item: never assumed),
- records per token which image it belongs to (`segment_ids`, -1 for text), which is what the
  layer-wise mask and the attention statistics need,
- applies the sequence-length variant (pooling, pixel control, stitching),
- pads on the left, so that batched greedy generation continues every row from its last token.

The prompt and the answer are tokenized separately and concatenated, so training sees exactly the
token sequence that generation continues from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .sequence import Variant, apply_to_images, pool_tokens

IGNORE_INDEX = -100
CHECKPOINT_METADATA = "mimic_checkpoint.json"  # written by core/training; read here for the layer mask


@dataclass
class ModelInput:
    """One item as a model sees it: images in order, the question, and the answer when training."""

    images: list[Image.Image]
    question: str
    answer: str | None = None


@dataclass
class EncodedBatch:
    model_inputs: dict  # keyword arguments of the model's forward / generate
    attention_mask: torch.Tensor  # (B, S) 1 for tokens, 0 for left padding
    segment_ids: torch.Tensor  # (B, S) image index of each vision token within its item, -1 for text and padding
    labels: torch.Tensor | None = None  # (B, S) answer tokens, IGNORE_INDEX elsewhere
    image_token_counts: list[list[int]] = field(default_factory=list)  # per item, per image

    @property
    def prompt_length(self) -> int:
        return self.attention_mask.shape[1]


class AdapterError(ValueError):
    pass


class VisionLanguageAdapter:
    """Shared logic; subclasses say how images become vision tokens for their architecture."""

    architecture = ""

    def __init__(self, model, tokenizer, image_processor, chat_template: str | None = None):
        self.model = model  # possibly a peft PeftModel
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise AdapterError("the checkpoint has no chat template (chat_template.jinja / chat_template.json / "
                               "tokenizer_config.json): copy the one that came with the model into its directory")  # fmt: skip
        self.layer_mask = None  # set by enable_layer_mask through `use_layer_mask`

    # -- what subclasses provide -------------------------------------------------------------------
    @property
    def hf_model(self):
        """The transformers model under any DDP (accelerate) and peft wrapper."""
        model = getattr(self.model, "module", self.model)  # DistributedDataParallel keeps the model here
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def image_token_id(self) -> int:
        return self.hf_model.config.image_token_id

    def unsupported(self, variant: Variant) -> str | None:
        """Why this architecture cannot run `variant`, or None when it can."""
        return None

    def _vision(self, images_per_item: list[list[Image.Image]], variant: Variant):
        """(per item per image token counts, what `_model_inputs` needs)."""
        raise NotImplementedError

    def _model_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision) -> dict:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def prompt_ids(self, n_images: int, question: str) -> list[int]:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=True,
        )  # fmt: skip
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        found = sum(1 for t in ids if t == self.image_token_id)
        if found != n_images:
            raise AdapterError(f"the chat template rendered {found} image placeholders for {n_images} images; "
                               f"check that its image part emits the token id {self.image_token_id}")  # fmt: skip
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(answer + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"]

    def encode(self, inputs: Sequence[ModelInput], variant: Variant = Variant(), with_answers: bool = False) -> EncodedBatch:
        images = [apply_to_images(item.images, variant) if item.images else [] for item in inputs]
        counts, vision = self._vision(images, variant)
        rows, label_rows, segment_rows = [], [], []
        for item, item_images, item_counts in zip(inputs, images, counts):
            prompt = self.prompt_ids(len(item_images), item.question)
            ids, segments = [], []
            image_index = 0
            for token in prompt:
                if token == self.image_token_id:
                    ids += [token] * item_counts[image_index]
                    segments += [image_index] * item_counts[image_index]
                    image_index += 1
                else:
                    ids.append(token)
                    segments.append(-1)
            labels = [IGNORE_INDEX] * len(ids)
            if with_answers:
                if item.answer is None:
                    raise AdapterError(f"training item without an answer: {item.question!r}")
                answer = self.answer_ids(item.answer)
                ids, labels, segments = ids + answer, labels + answer, segments + [-1] * len(answer)
            rows.append(ids)
            label_rows.append(labels)
            segment_rows.append(segments)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id

        def left_pad(row, value):
            return [value] * (width - len(row)) + row

        input_ids = torch.tensor([left_pad(r, pad) for r in rows], dtype=torch.long)
        attention_mask = torch.tensor([left_pad([1] * len(r), 0) for r in rows], dtype=torch.long)
        segment_ids = torch.tensor([left_pad(s, -1) for s in segment_rows], dtype=torch.long)
        labels = torch.tensor([left_pad(r, IGNORE_INDEX) for r in label_rows], dtype=torch.long) if with_answers else None
        device = self.device
        input_ids, attention_mask, segment_ids = input_ids.to(device), attention_mask.to(device), segment_ids.to(device)
        return EncodedBatch(
            model_inputs=self._model_inputs(input_ids, attention_mask, vision), attention_mask=attention_mask,
            segment_ids=segment_ids, labels=None if labels is None else labels.to(device), image_token_counts=counts,
        )  # fmt: skip

    def _mask_context(self, batch: EncodedBatch):
        if self.layer_mask is None:
            return nullcontext()
        from .masking import layer_mask_context

        return layer_mask_context(batch.segment_ids, batch.attention_mask)

    def forward(self, batch: EncodedBatch, **kwargs):
        """The model's forward (with the loss when the batch has labels), under the layer mask if one is set."""
        with self._mask_context(batch):
            return self.model(**batch.model_inputs, labels=batch.labels, **kwargs)

    def loss(self, inputs: Sequence[ModelInput], variant: Variant = Variant()) -> torch.Tensor:
        return self.forward(self.encode(inputs, variant, with_answers=True)).loss

    @torch.no_grad()
    def generate(self, inputs: Sequence[ModelInput], variant: Variant = Variant(), max_new_tokens: int = 24) -> list[str]:
        """Greedy answers, one per item, decoded without special tokens."""
        batch = self.encode(inputs, variant)
        with self._mask_context(batch):
            out = self.model.generate(
                **batch.model_inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )  # fmt: skip
        if "input_ids" in batch.model_inputs:  # generate returns prompt + continuation when given ids
            out = out[:, batch.prompt_length :]
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def use_layer_mask(self, layer_mask) -> None:
        """Install (or with None remove) the layer-wise attention mask on this model."""
        from .masking import disable_layer_mask, enable_layer_mask

        if layer_mask is None:
            disable_layer_mask(self.model)
        else:
            enable_layer_mask(self.model, layer_mask)
        self.layer_mask = layer_mask

    @property
    def num_text_layers(self) -> int:
        return self.hf_model.config.text_config.num_hidden_layers


class LlavaOnevisionAdapter(VisionLanguageAdapter):
    """LLaVA-OneVision: vision features are computed here, pooled, and scattered into the embeddings."""

    architecture = "llava_onevision"

    def _vision(self, images_per_item, variant):
        with_images = [imgs for imgs in images_per_item if imgs]
        if not with_images:
            return [[] for _ in images_per_item], []
        processed = self.image_processor(with_images, return_tensors="pt")
        hf = self.hf_model
        features = hf.model.get_image_features(
            processed["pixel_values"].to(self.device, hf.dtype), processed["image_sizes"].to(self.device),
            batch_num_images=processed["batch_num_images"], return_dict=True,
        ).pooler_output  # fmt: skip
        features = [pool_tokens(f, variant.pool) for f in features]
        counts, cursor = [], 0
        for imgs in images_per_item:
            counts.append([f.shape[0] for f in features[cursor : cursor + len(imgs)]])
            cursor += len(imgs)
        return counts, features

    def _model_inputs(self, input_ids, attention_mask, vision):
        embeds = self.hf_model.get_input_embeddings()(input_ids)
        if vision:
            where = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(where, torch.cat(vision).to(embeds.dtype))
        return {"inputs_embeds": embeds, "attention_mask": attention_mask}


class Qwen2VLAdapter(VisionLanguageAdapter):
    """Qwen2-VL: `<|image_pad|>` tokens expanded per image grid; the model computes its own features and
    its 3-D rotary positions from the ids, so 1-D pooling (which breaks that grid) is not offered."""

    architecture = "qwen2_vl"

    def unsupported(self, variant: Variant) -> str | None:
        if variant.pool != 1:
            return (f"variant {variant.name}: vision-token pooling is implemented for LLaVA-OneVision; Qwen2-VL places "
                    "its tokens on a 2-D rotary grid that 1-D pooling would break. Use the pixel control or stitching "
                    "with Qwen2-VL.")  # fmt: skip
        return None

    def _vision(self, images_per_item, variant):
        if reason := self.unsupported(variant):
            raise AdapterError(reason)
        flat = [im for imgs in images_per_item for im in imgs]
        if not flat:
            return [[] for _ in images_per_item], {}
        processed = self.image_processor(images=flat, return_tensors="pt")
        merge = self.image_processor.merge_size**2
        per_image = [int(t * h * w) // merge for t, h, w in processed["image_grid_thw"].tolist()]
        counts, cursor = [], 0
        for imgs in images_per_item:
            counts.append(per_image[cursor : cursor + len(imgs)])
            cursor += len(imgs)
        return counts, {"pixel_values": processed["pixel_values"].to(self.device, self.hf_model.dtype),
                        "image_grid_thw": processed["image_grid_thw"].to(self.device)}  # fmt: skip

    def _model_inputs(self, input_ids, attention_mask, vision):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **vision}
        if vision:  # which tokens are image tokens: the model places its 3-D rotary positions by them
            inputs["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        return inputs


ADAPTERS = {cls.architecture: cls for cls in (LlavaOnevisionAdapter, Qwen2VLAdapter)}


def _chat_template(path: Path) -> str | None:
    """The processor's chat template where the checkpoint has one (downloaded LLaVA-OV keeps it there)."""
    if (path / "chat_template.json").exists():
        return json.loads((path / "chat_template.json").read_text())["chat_template"]
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text()
    return None


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """("auto", "auto") -> CUDA in bfloat16 where a GPU is visible, else the CPU in float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return device, getattr(torch, dtype)


def load_adapter(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> VisionLanguageAdapter:
    """Load a checkpoint directory (full model, or a peft adapter whose config names its base)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: no such checkpoint directory")
    adapter_config = path / "adapter_config.json"
    base_path = path
    if adapter_config.exists():
        base_path = Path(json.loads(adapter_config.read_text())["base_model_name_or_path"])
        if not (base_path / "config.json").exists():
            raise AdapterError(f"{adapter_config}: its base model {base_path} has no config.json; "
                               "point base_model_name_or_path at the base checkpoint directory")  # fmt: skip
    config_file = base_path / "config.json"
    if not config_file.exists():
        raise AdapterError(f"{path}: no config.json (is this a complete checkpoint directory?)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in ADAPTERS:
        raise AdapterError(f"{config_file}: model_type {model_type!r} is not supported; "
                           f"supported: {', '.join(ADAPTERS)}")  # fmt: skip
    model_cls, processor_cls = _classes(model_type)
    model = model_cls.from_pretrained(base_path, dtype=dtype).to(device)
    if adapter_config.exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
    model.eval()
    tokenizer_dir = path if (path / "tokenizer_config.json").exists() else base_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"
    image_processor = processor_cls.from_pretrained(tokenizer_dir)
    adapter = ADAPTERS[model_type](model, tokenizer, image_processor, _chat_template(tokenizer_dir))
    masked = _recorded_mask(path)
    if masked is not None:
        adapter.use_layer_mask(masked)
    return adapter


def _recorded_mask(path: Path):
    """The layer mask a checkpoint was trained with (recorded in its metadata): part of the model."""
    meta_file = path / CHECKPOINT_METADATA
    if not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    if not meta.get("masked_layers"):
        return None
    from .masking import LayerMask

    return LayerMask(layers=meta["masked_layers"], mode=meta.get("mask_mode", "block"))


def _classes(model_type: str):
    # PIL image processors: the torchvision-backed defaults are not installed (ENGINEERING.md)
    if model_type == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        return LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil
