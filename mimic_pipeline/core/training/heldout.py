"""Held-out accuracy: does a recipe actually learn? Scored by the benchmark's own scorer."""

from __future__ import annotations

from collections import defaultdict

from ..models.adapters import VisionLanguageAdapter
from ..models.sequence import Variant
from ..scoring import score_answer
from .data import ImageCache, ItemPool


def heldout_accuracy(adapter: VisionLanguageAdapter, pool: ItemPool, images: ImageCache | None = None,
                     batch_size: int = 32, variant: Variant = Variant(), max_new_tokens: int = 16) -> dict[str, float]:  # fmt: skip
    """Accuracy in percent per task and over all items ("all"): exact answers (the whole set for Listing)."""
    images = images or ImageCache()
    was_training = adapter.model.training
    adapter.model.eval()
    correct: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, len(pool), batch_size):
        idx = list(range(start, min(start + batch_size, len(pool))))
        answers = adapter.generate(pool.inputs(idx, images, with_answers=False), variant, max_new_tokens)
        for i, text in zip(idx, answers):
            correct[pool.tasks[i]].append(score_answer(pool.tasks[i], text, pool.scoring_item(i)).correct)
    if was_training:
        adapter.model.train()
    result = {task: round(100 * sum(v) / len(v), 1) for task, v in sorted(correct.items())}
    flat = [c for v in correct.values() for c in v]
    result["all"] = round(100 * sum(flat) / max(1, len(flat)), 1)
    return result
