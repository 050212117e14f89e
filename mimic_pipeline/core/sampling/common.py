"""Common: "Which object category appears in every one of these images?"

The answer category is drawn uniformly (balanced answers), then image sets holding it are drawn
in vectorised batches until one has no *second* category present in every image.
"""

from __future__ import annotations

import numpy as np

from .config import Cell
from .items import ItemDraft
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 200
BATCH = 32


class CommonSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.classes = [c for c in range(len(index.names)) if index.leaf[c]]

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> list[ItemDraft]:
        if cell.axis != "n_images":
            raise ValueError(f"unknown common study {cell.axis!r}")
        return [self.draw(rng, cell.get("n_images")) for _ in range(n)]

    def draw(self, rng: np.random.Generator, n_images: int) -> ItemDraft:
        idx = self.index
        for _ in range(MAX_TRIES):
            a = self.classes[int(rng.integers(0, len(self.classes)))]
            pool = idx.pools[a].images
            if len(pool) < n_images:
                continue
            cand = rng.choice(pool, size=(BATCH, n_images))
            inter = np.bitwise_and.reduce(idx.present[cand], axis=1)
            only_a = np.all(inter == idx.bits([a]), axis=1)
            distinct = np.all(np.diff(np.sort(cand, axis=1), axis=1) != 0, axis=1) if n_images > 1 else np.ones(BATCH, bool)
            hits = np.flatnonzero(only_a & distinct)
            if len(hits):
                images = cand[hits[0]].tolist()
                per_image = [names_present(idx, i) for i in images]
                return ItemDraft(images, ["needle"] * n_images, [], idx.names[a], {"category": idx.names[a], "per_image": per_image})
        raise SamplingError(f"{idx.source}/{idx.split}: no set of {n_images} images with exactly one common category "
                            f"found in {MAX_TRIES} tries")  # fmt: skip


def names_present(index: SamplingIndex, image: int) -> list[str]:
    return sorted(index.names[c] for c in index.categories_in(image))
