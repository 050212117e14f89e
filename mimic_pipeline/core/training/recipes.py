"""Training recipes: every number a config value, hashed into the checkpoint's lineage.

- `base`: the tiny model trained from scratch on the single-image instruction set (everything
  trainable), after a short vision pre-training stage (below).
- `full_ft`: language model + projector fine-tuned on the multi-image training set, vision frozen.
- `lora`: LoRA on every linear layer of the language model only (a regex that names the language
  model, so the vision tower is never hit), projector trained, vision frozen. Paper defaults:
  r=128, alpha=32, dropout 0.05.
- `lora_masked`: `lora` with the layer-wise attention mask on the second half of the LM.

Every recipe may add a vision-token pooling factor. Fine-tuning mixes a share of single-image items
into each batch so the single-image skill is kept (notes/tiny-model.md: without it, it halves).

The learning rates here are the tiny model's (measured on a CPU, see the README); the paper's
2.5e-5 is for the 0.5B model and is what `paper_lora()` gives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..files import config_hash

LM_LINEAR_LAYERS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
RECIPE_NAMES = ("base", "full_ft", "lora", "lora_masked")


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: int
    batch_size: int = 16
    lr: float = 5e-4
    projector_lr: float | None = None  # None: same as lr
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    trainable: str = "lm+projector"  # "all" | "lm+projector" | "lora+projector"
    lora_r: int = 128
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = LM_LINEAR_LAYERS
    masked_layers: str = ""  # "" (none), "second_half", or "start-stop" (LM layer indices, stop exclusive)
    mask_mode: str = "block"  # the compute-saving implementation; "dense" is the reference
    pool: int = 1
    single_image_share: float = 0.25  # of each fine-tuning batch
    vision_pretrain_steps: int = 0  # base only: supervised per-class counting on the vision tower first
    vision_pretrain_lr: float = 2e-3
    align_steps: int = 0  # base only: projector alignment to the word embeddings after vision pre-training
    freeze_vision_after_pretrain: bool = True  # base: the LM stage trains LM + projector, as real LVLMs do
    save_every: int = 100
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.trainable not in ("all", "lm+projector", "lora+projector"):
            raise ValueError(f"recipe {self.name}: trainable={self.trainable!r}; use all, lm+projector or lora+projector")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"recipe {self.name}: steps and batch_size must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        return config_hash(self.as_dict())

    def masked_layer_range(self, num_layers: int) -> range | None:
        if not self.masked_layers:
            return None
        if self.masked_layers == "second_half":
            return range(num_layers // 2, num_layers)
        start, _, stop = self.masked_layers.partition("-")
        if not (start.isdigit() and stop.isdigit() and 0 <= int(start) < int(stop) <= num_layers):
            raise ValueError(f"recipe {self.name}: masked_layers={self.masked_layers!r}; "
                             f"use second_half or start-stop within 0-{num_layers}")  # fmt: skip
        return range(int(start), int(stop))


def default_recipes(scale: float = 1.0) -> dict[str, Recipe]:
    """The demo's recipes for the tiny model; `scale` multiplies the step counts (tests use a small one)."""

    def steps(n: int) -> int:
        return max(2, round(n * scale))

    base = Recipe("base", steps=steps(1200), trainable="all", lr=1e-3, single_image_share=1.0,
                  vision_pretrain_steps=steps(300), align_steps=steps(200), save_every=200)  # fmt: skip
    full_ft = Recipe("full_ft", steps=steps(250), batch_size=8, lr=5e-4)
    lora = Recipe("lora", steps=steps(250), batch_size=8, trainable="lora+projector", lr=2e-3)
    return {
        "base": base,
        "full_ft": full_ft,
        "lora": lora,
        "lora_masked": replace(lora, name="lora_masked", masked_layers="second_half"),
    }


def paper_lora(steps: int) -> Recipe:
    """The MIMIC paper's LoRA recipe for LLaVA-OV 0.5B (lr 2.5e-5 cosine, 3% warmup), for real models."""
    return Recipe("lora", steps=steps, trainable="lora+projector", lr=2.5e-5, batch_size=8, single_image_share=0.0)


def configured_recipe(name: str, steps_scale: float = 1.0, overrides: dict | None = None, paper: bool = False) -> Recipe:
    """A default recipe (or the paper's LoRA settings) with some fields changed; unknown fields are refused."""
    if name not in RECIPE_NAMES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPE_NAMES)}")
    recipe = default_recipes(steps_scale)[name]
    if paper:
        if name not in ("lora", "lora_masked"):
            raise ValueError("the paper's settings are a LoRA recipe: use them with lora or lora_masked")
        recipe = replace(paper_lora(recipe.steps), name=name, masked_layers=recipe.masked_layers)
    overrides = overrides or {}
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown recipe fields {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(recipe, **overrides)
