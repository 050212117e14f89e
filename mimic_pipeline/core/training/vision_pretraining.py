"""Vision pre-training for the from-scratch base: teach the vision tower to see before the LM reads it.

Real vision-language models start from a pretrained SigLIP; the tiny model starts from random
weights, and learning recognition only through the language model's answer token is slow
(notes/tiny-model.md: hundreds of flat steps). So the `base` recipe first trains the vision tower
with a small auxiliary head: every patch token is classified into one of the categories or
"nothing", and the sum of the patch probabilities is the predicted count of each category. The
single-image counting and presence questions supply the targets (the count of the asked class; 0
for a "no").

A second, alignment stage (LLaVA's "stage 1" in miniature) then trains the projector alone so that
each patch lands on the language model's embedding of the word for what the patch shows (the
head's class probabilities mix the word embeddings; "nothing" maps to the word "none"). The LM then
starts from image tokens that already look like the words it is asked about, and learns to bind
question and image in a few hundred steps instead of thousands. The head is thrown away; only the
tower's and projector's weights carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path
from .data import ImageCache, ItemPool


def count_targets(pool: ItemPool) -> tuple[list[str], list[tuple[int, int, int]]]:
    """(class names, [(item index, class index, count)]) from counting items and "no" presence items."""
    names = sorted({q[0] for q, t in zip(pool.queries, pool.tasks) if t in ("counting", "presence") and q})
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for i, (task, query, answer) in enumerate(zip(pool.tasks, pool.queries, pool.answers)):
        if task == "counting" and answer.isdigit():
            rows.append((i, index[query[0]], int(answer)))
        elif task == "presence" and answer == "no":
            rows.append((i, index[query[0]], 0))
    return names, rows


def pretrain_vision(adapter, pool: ItemPool, recipe, images: ImageCache, staging: Path,
                    progress: Callable[[str, int, int, float], None] | None = None) -> list[float]:  # fmt: skip
    """Train the vision tower, then align the projector; returns the tower's loss curve.

    Skipped when the staging folder already holds the result (a resumed run).
    """
    done = staging / "vision_pretrained.pt"
    model = adapter.hf_model.model
    if done.exists():
        saved = torch.load(done)
        model.vision_tower.load_state_dict(saved["tower"])
        model.multi_modal_projector.load_state_dict(saved["projector"])
        return []
    names, rows = count_targets(pool)
    if not rows:
        raise ValueError("vision pre-training needs single-image counting items; the pool has none")
    head, losses = _train_tower(adapter, pool, names, rows, recipe, images, progress)
    _align_projector(adapter, pool, names, rows, head, recipe, images)
    with atomic_path(done) as tmp:  # every process of a multi-process run writes it; a reader never sees half
        torch.save({"tower": model.vision_tower.state_dict(), "projector": model.multi_modal_projector.state_dict()}, tmp)
    return losses


def _pixels(adapter, pool: ItemPool, batch, images: ImageCache) -> torch.Tensor:
    size = adapter.image_processor.size["height"]
    pictures = [images(pool.image_paths[i][0]).resize((size, size)) for i, _, _ in batch]
    return adapter.image_processor(pictures, return_tensors="pt")["pixel_values"][:, 0].to(adapter.device)  # base view


def _train_tower(adapter, pool, names, rows, recipe, images, progress):
    tower = adapter.hf_model.model.vision_tower
    torch.manual_seed(recipe.seed)
    head = torch.nn.Linear(tower.config.hidden_size, len(names) + 1)  # + "nothing here"
    params = [*tower.parameters(), *head.parameters()]
    for p in tower.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=recipe.vision_pretrain_lr)
    rng = np.random.default_rng([recipe.seed, 11])
    tower.train()
    losses = []
    for step in range(recipe.vision_pretrain_steps):
        batch = [rows[int(k)] for k in rng.integers(0, len(rows), size=2 * recipe.batch_size)]
        patches = tower(_pixels(adapter, pool, batch, images)).last_hidden_state  # (N, patches, hidden)
        expected = head(patches).softmax(-1).sum(1)[:, :-1]  # (N, classes): soft count per class
        cls = torch.tensor([c for _, c, _ in batch])
        target = torch.tensor([n for _, _, n in batch], dtype=expected.dtype)
        loss = torch.nn.functional.mse_loss(expected[torch.arange(len(batch)), cls], target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress:
            progress("vision pre-training", step + 1, recipe.vision_pretrain_steps, losses[-1])
    return head, losses


def _word_embedding(adapter, word: str) -> torch.Tensor:
    ids = adapter.tokenizer(word, add_special_tokens=False)["input_ids"]
    return adapter.hf_model.get_input_embeddings().weight[ids].mean(0)


def _align_projector(adapter, pool, names, rows, head, recipe, images) -> list[float]:
    """Projector steps (tower and head frozen): patch -> mix of its class words' embeddings."""
    model = adapter.hf_model.model
    with torch.no_grad():
        words = torch.stack([_word_embedding(adapter, n) for n in names] + [_word_embedding(adapter, "none")])
    optimizer = torch.optim.AdamW(model.multi_modal_projector.parameters(), lr=recipe.vision_pretrain_lr)
    rng = np.random.default_rng([recipe.seed, 13])
    losses = []
    for _ in range(recipe.align_steps):
        batch = [rows[int(k)] for k in rng.integers(0, len(rows), size=2 * recipe.batch_size)]
        with torch.no_grad():
            patches = model.vision_tower(_pixels(adapter, pool, batch, images)).last_hidden_state
            target = head(patches).softmax(-1) @ words  # (N, patches, text hidden)
        loss = torch.nn.functional.mse_loss(model.multi_modal_projector(patches), target) / target.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses
