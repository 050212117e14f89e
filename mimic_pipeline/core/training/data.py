"""Items from the Parquet item sets as model inputs, with their images decoded once and cached."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ..errors import InputFileError
from ..models.adapters import ModelInput


FIELDS = ("item_ids", "questions", "answers", "image_paths", "tasks", "queries", "answer_structs")


class ImageCache:
    """Decoded RGB images by path. The shapes world's images are tiny (3 KiB decoded at 32 px), so
    a training run keeps every image it has seen instead of decoding it again each step."""

    def __init__(self, max_images: int = 200_000):
        self.max_images = max_images
        self._images: dict[str, Image.Image] = {}

    def __call__(self, path: str) -> Image.Image:
        image = self._images.get(path)
        if image is None:
            try:
                with Image.open(path) as f:
                    image = f.convert("RGB")
            except FileNotFoundError:
                raise InputFileError(path, "image file is missing",
                                     "re-materialize the source (shapes_world) or fix the image root") from None  # fmt: skip
            except OSError as e:
                raise InputFileError(path, f"unreadable image ({e})", "replace the file with a valid image") from None
            if len(self._images) < self.max_images:
                self._images[path] = image
        return image


def model_inputs(images: ImageCache, image_paths: Sequence[Sequence[str]], questions: Sequence[str],
                 answers: Sequence[str] | None = None) -> list[ModelInput]:  # fmt: skip
    """One `ModelInput` per item: its images (decoded through the cache) in order, question, answer."""
    answers = answers if answers is not None else [None] * len(questions)
    return [ModelInput([images(p) for p in paths], q, a) for paths, q, a in zip(image_paths, questions, answers)]


@dataclass
class ItemPool:
    """Questions, answers and image paths of a set of items, drawn from by index."""

    item_ids: list[str]
    questions: list[str]
    answers: list[str]
    image_paths: list[list[str]]
    tasks: list[str]
    queries: list[list[str]]
    answer_structs: list[str]  # JSON, what the scorer reads for Listing

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_parquet(cls, paths: Sequence[str | Path]) -> ItemPool:
        cols = ["item_id", "question", "answer", "image_paths", "task", "query", "answer_struct"]
        parts = []
        for path in paths:
            if not Path(path).exists():
                raise InputFileError(path, "item set is missing", "materialize the item set asset first")
            parts.append(pq.read_table(path, columns=cols))
        data = {c: [v for t in parts for v in t.column(c).to_pylist()] for c in cols}
        return cls(*(data[c] for c in cols))

    def take(self, idx: Sequence[int]) -> ItemPool:
        return ItemPool(*([getattr(self, f)[i] for i in idx] for f in FIELDS))

    def inputs(self, idx: Sequence[int], images: ImageCache, with_answers: bool = True) -> list[ModelInput]:
        answers = [self.answers[i] for i in idx] if with_answers else None
        return model_inputs(images, [self.image_paths[i] for i in idx], [self.questions[i] for i in idx], answers)


    def scoring_item(self, i: int) -> dict:
        """What `core.scoring.score_answer` reads."""
        return {"answer": self.answers[i], "answer_struct": self.answer_structs[i], "query": self.queries[i]}


def category_names(pool: ItemPool) -> tuple[list[str], list[str]]:
    """(leaf categories, parents) named by a single-image pool: the vocabulary a fresh tiny model needs."""
    parents = sorted({q[0] for q, t in zip(pool.queries, pool.tasks) if t == "listing" and q})
    leaves = {q[0] for q, t in zip(pool.queries, pool.tasks) if t in ("counting", "presence") and q}
    for answer, task in zip(pool.answers, pool.tasks):
        if task == "listing":
            leaves.update(a.strip() for a in answer.split(",") if a.strip())
    return sorted(leaves), parents


def split_holdout(pool: ItemPool, n_holdout: int, seed: int) -> tuple[ItemPool, ItemPool]:
    """(train, held out): a fixed random subset is kept out of training to measure learning."""
    order = np.random.default_rng([seed, 7]).permutation(len(pool))
    return pool.take(sorted(order[n_holdout:])), pool.take(sorted(order[:n_holdout]))
