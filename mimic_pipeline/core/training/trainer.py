"""The training loop behind every recipe: deterministic batches, resumable, accelerate-ready.

Batches are drawn by a generator keyed on (seed, step), so a resumed run sees exactly the batches
the uninterrupted run would have seen, with no data-loader state to save. Every `save_every` steps
the trainable weights, optimizer, scheduler and loss history are written atomically into the
staging folder; a restarted run continues from there. The finished checkpoint is assembled in the
staging folder and swapped into place whole, `DONE` written last, so the checkpoints folder never
shows a half-written checkpoint and a re-train never damages the previous good one.

Multi-process training goes through `accelerate launch` (see `python -m mimic_pipeline.core.training`):
each process takes its slice of the step's batch, gradients are averaged by DDP, the main process
saves.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_dir, write_json_atomic
from ..models.adapters import VisionLanguageAdapter, load_adapter
from ..models.sequence import Variant
from .checkpoints import DONE, METADATA, checkpoint_files_for, read_metadata
from .data import ImageCache, ItemPool
from .heldout import heldout_accuracy
from .recipes import Recipe
from .vision_pretraining import pretrain_vision

STATE_DIR = "training_state"


@dataclass
class TrainingData:
    multi_image: ItemPool | None  # the procedural multi-image training set (fine-tuning recipes)
    single_image: ItemPool | None  # the single-image instruction set
    version: str = ""  # data version of the training set (lineage)

    def draw(self, recipe: Recipe, step: int, batch_size: int) -> list[tuple[ItemPool, int]]:
        """The step's items as (pool, index); a pure function of (seed, step)."""
        rng = np.random.default_rng([recipe.seed, step])
        pools = []
        n_single = batch_size if self.multi_image is None else round(batch_size * recipe.single_image_share)
        if n_single and self.single_image is None:
            raise ValueError(f"recipe {recipe.name} needs the single-image instruction set")
        for pool, n in ((self.single_image, n_single), (self.multi_image, batch_size - n_single)):
            if n:
                pools += [(pool, int(i)) for i in rng.integers(0, len(pool), size=n)]
        return pools


@dataclass
class TrainingResult:
    path: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    heldout_accuracy: dict = field(default_factory=dict)  # {"before": {task: %}, "after": {...}}
    main_process: bool = True  # False in the other processes of an `accelerate launch` run
    processes: int = 1  # data-parallel processes that trained it


def _configure(adapter: VisionLanguageAdapter, recipe: Recipe) -> None:
    """Freeze / unfreeze / wrap the model as the recipe says; install the layer mask."""
    model = adapter.hf_model
    if recipe.trainable == "lora+projector":
        from peft import LoraConfig, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(
            r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
            target_modules=recipe.lora_targets, modules_to_save=["multi_modal_projector"], bias="none",
        )  # fmt: skip
        with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 deprecates; not ours to fix
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            adapter.model = get_peft_model(model, lora)
    else:
        # a pre-trained tower stays frozen afterwards, as in real LVLMs; "all" without pre-training trains it too
        tower_trains = recipe.trainable == "all" and not (recipe.vision_pretrain_steps and recipe.freeze_vision_after_pretrain)
        for name, p in model.named_parameters():
            in_tower = name.startswith(("model.vision_tower", "vision_tower", "model.visual", "visual"))
            p.requires_grad_(tower_trains or not in_tower)
    layers = recipe.masked_layer_range(adapter.num_text_layers)
    if layers is not None:
        from ..models.masking import LayerMask

        adapter.use_layer_mask(LayerMask(layers=list(layers), mode=recipe.mask_mode))


def _optimizer(adapter: VisionLanguageAdapter, recipe: Recipe, total_steps: int):
    projector, rest = [], []
    for name, p in adapter.model.named_parameters():
        if p.requires_grad:
            (projector if "multi_modal_projector" in name else rest).append(p)
    groups = [{"params": rest, "lr": recipe.lr}]
    if projector:
        groups.append({"params": projector, "lr": recipe.projector_lr or recipe.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    warmup = max(1, math.ceil(recipe.warmup_ratio * total_steps))

    def schedule(step: int) -> float:  # linear warmup, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_state(staging: Path, model, optimizer, scheduler, step: int, losses: list[float], recipe: Recipe) -> None:
    with atomic_dir(staging / STATE_DIR) as tmp:
        torch.save({"weights": _trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step, "losses": losses,
                    "recipe_hash": recipe.hash()}, tmp / "state.pt")  # fmt: skip


def _load_state(staging: Path, model, optimizer, scheduler, recipe: Recipe) -> tuple[int, list[float]]:
    path = staging / STATE_DIR / "state.pt"
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=False)
    if state["recipe_hash"] != recipe.hash():
        shutil.rmtree(staging / STATE_DIR)  # a different recipe: its half-done state is no use
        return 0, []
    missing = model.load_state_dict(state["weights"], strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"{path}: saved weights do not fit the model ({missing.unexpected_keys[:3]} ...); "
                           "delete the staging folder to start over")  # fmt: skip
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"], state["losses"]


def staging_dir(out_dir: Path) -> Path:
    """Where a checkpoint is built (dot-prefixed: the checkpoint sensor never looks at it)."""
    return out_dir.parent / ".staging" / out_dir.name


def train_checkpoint(
    recipe: Recipe,
    out_dir: str | Path,
    data: TrainingData,
    base: str | Path | None = None,
    build_base: Callable[[Path], Path] | None = None,
    lineage: dict | None = None,
    progress: Callable[[str, int, int, float], None] | None = None,  # (stage, step, total, loss)
    stop_after: int | None = None,
    heldout: ItemPool | None = None,
) -> TrainingResult:
    """Train `recipe` from `base` (or from `build_base(dir)` for a model trained from scratch) into `out_dir`.

    `stop_after` ends the run early after that many steps (state saved, no checkpoint): what a
    kill would do, for tests of resuming. `heldout` items (kept out of `data` by the caller) are
    answered before (fine-tuning only) and after training; the accuracies go into the metadata.
    """
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    staging.mkdir(parents=True, exist_ok=True)
    # without a GPU, processes started by `accelerate launch --multi_gpu` / torchrun join one gloo group
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if base is None:
        if build_base is None:
            raise ValueError(f"recipe {recipe.name}: give a base checkpoint or a builder for a fresh model")
        init = staging / "init"
        if not (init / "config.json").exists():
            if accelerator.is_main_process:
                with atomic_dir(init) as tmp:
                    build_base(tmp)
            accelerator.wait_for_everyone()
        base = init
    base = Path(base)
    torch.manual_seed(recipe.seed)
    adapter = load_adapter(base)
    started = time.perf_counter()
    accuracy = {}
    if heldout is not None and build_base is None and accelerator.is_main_process:
        accuracy["before"] = heldout_accuracy(adapter, heldout)
    if recipe.vision_pretrain_steps and data.single_image is not None:
        pretrain_vision(adapter, data.single_image, recipe, ImageCache(), staging, progress if accelerator.is_main_process else None)
    _configure(adapter, recipe)
    adapter.model.train()
    optimizer, scheduler = _optimizer(adapter, recipe, recipe.steps)
    step, losses = _load_state(staging, adapter.model, optimizer, scheduler, recipe)
    model, optimizer = accelerator.prepare(adapter.model, optimizer)
    adapter.model = model
    images = ImageCache()
    variant = Variant(pool=recipe.pool)
    rank, world = accelerator.process_index, accelerator.num_processes
    while step < recipe.steps:
        drawn = data.draw(recipe, step, recipe.batch_size * world)[rank::world]
        inputs = [item for pool, i in drawn for item in pool.inputs([i], images)]
        loss = adapter.loss(inputs, variant)
        accelerator.backward(loss)
        if recipe.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(accelerator.reduce(loss.detach(), "mean")))
        step += 1
        if progress and accelerator.is_main_process:
            progress("training", step, recipe.steps, losses[-1])
        if step % recipe.save_every == 0 or (stop_after is not None and step >= stop_after):
            if accelerator.is_main_process:
                _save_state(staging, accelerator.unwrap_model(model), optimizer, scheduler, step, losses, recipe)
            accelerator.wait_for_everyone()
        if stop_after is not None and step >= stop_after and step < recipe.steps:
            return TrainingResult(staging, step, losses, time.perf_counter() - started)
    adapter.model = accelerator.unwrap_model(model)
    adapter.model.eval()
    wall = time.perf_counter() - started
    n_train = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in adapter.model.parameters())
    result = TrainingResult(out_dir, step, losses, wall, n_train, n_total, main_process=accelerator.is_main_process,
                            processes=accelerator.num_processes)
    if accelerator.is_main_process:
        if heldout is not None:
            accuracy["after"] = heldout_accuracy(adapter, heldout, variant=variant)
            result.heldout_accuracy = accuracy
        parent = None if build_base is not None else base  # a fresh build is no parent
        _write_checkpoint(adapter, recipe, parent, out_dir, data, result, lineage or {})
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    return result


def _write_checkpoint(adapter, recipe: Recipe, base: Path | None, out_dir: Path, data: TrainingData,
                      result: TrainingResult, lineage: dict) -> None:  # fmt: skip
    if adapter.layer_mask is not None:
        adapter.use_layer_mask(None)  # the mask is recorded in the metadata and re-installed on load
    with atomic_dir(out_dir) as tmp:
        if hasattr(adapter.model, "peft_config"):  # the adapter's config names its base by absolute path
            adapter.model.peft_config["default"].base_model_name_or_path = str(base.resolve())
        adapter.model.save_pretrained(tmp)
        adapter.tokenizer.save_pretrained(tmp)
        adapter.image_processor.save_pretrained(tmp)
        base_name = None if base is None else read_metadata(base).get("name", str(base))
        metadata = {
            "name": out_dir.name, "recipe": recipe.name, "recipe_config": recipe.as_dict(),
            "config_hash": recipe.hash(), "base_checkpoint": base_name, "base_path": None if base is None else str(base.resolve()),
            "training_set_version": data.version, "steps": result.steps, "loss_curve": result.losses,
            "wall_s": round(result.wall_s, 2), "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters, "architecture": adapter.architecture,
            "masked_layers": list(recipe.masked_layer_range(adapter.num_text_layers) or []),
            "mask_mode": recipe.mask_mode, "pool": recipe.pool, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "heldout_accuracy": result.heldout_accuracy, "processes": result.processes, "files": checkpoint_files_for(tmp), **lineage,
        }  # fmt: skip
        write_json_atomic(tmp / METADATA, metadata)
        (tmp / DONE).write_text(metadata["created"] + "\n")  # last: only now does the checkpoint count


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    single_image_files: list[Path],
    train_files: list[Path] = (),
    base: str | Path | None = None,
    names: tuple[list[str], list[str]] | None = None,
    n_heldout: int = 200,
    progress: Callable[[str, int, int, float], None] | None = None,  # (stage, step, total, loss)
    lineage: dict | None = None,
) -> TrainingResult:
    """Everything around `train_checkpoint` that the Dagster asset and `mimic train` share: load the
    item sets, hold `n_heldout` items out (single-image ones for `base`, multi-image otherwise) and
    build a fresh tiny model (vocabulary from `names`, else from the items) when there is no base."""
    from ..files import config_hash, file_fingerprints
    from ..models.tiny import TinyModelConfig, build_tiny_checkpoint
    from .data import category_names, split_holdout

    single = ItemPool.from_parquet(single_image_files) if single_image_files else None
    multi = ItemPool.from_parquet(train_files) if train_files else None
    from_scratch = base is None
    if from_scratch and single is None:
        raise ValueError(f"recipe {recipe.name}: training from scratch needs the single-image item set")
    if not from_scratch and multi is None and recipe.single_image_share < 1:
        raise ValueError(f"recipe {recipe.name}: fine-tuning needs the multi-image training set")
    held = None
    if n_heldout:
        if from_scratch or multi is None:
            single, held = split_holdout(single, min(n_heldout, len(single) // 5), recipe.seed)
        else:
            multi, held = split_holdout(multi, min(n_heldout, len(multi) // 5), recipe.seed)
    files = [*single_image_files, *train_files]
    version = config_hash(file_fingerprints({str(f): f for f in files}))
    build = None
    if from_scratch:
        leaves, parents = names or category_names(single)

        def build(folder: Path) -> Path:
            return build_tiny_checkpoint(folder, leaves, parents, TinyModelConfig(seed=recipe.seed))

    return train_checkpoint(recipe, out_dir, TrainingData(multi, single, version), base=base, build_base=build,
                            lineage=lineage, progress=progress, heldout=held)  # fmt: skip
