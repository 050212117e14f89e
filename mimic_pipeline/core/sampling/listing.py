"""Listing: "Which kinds of {parent} appear in these images?" The answer is the sorted set of the
parent's sub-categories present in any image.

The answer set is drawn first (uniformly among subsets of the chosen size), then images whose
children are a subset of it until their union is exactly it, so answers are balanced by
construction. Distractor images hold no child of the parent (nor the parent class itself).
"""

from __future__ import annotations

import numpy as np

from .config import Cell
from .families import Family, require_families
from .items import ItemDraft, shuffled
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 200
DRAWS_PER_SUBSET = 8


class ListingSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.families = require_families(index, "Listing")
        self.parents = sorted(self.families)

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> list[ItemDraft]:
        if cell.axis == "n_subcategories":
            return [self.draw(rng, cell.get("n_images"), 0, k=cell.get("n_subcategories")) for _ in range(n)]
        if cell.axis == "distractors":
            return [self.draw(rng, settings["n_needle_images"], cell.get("n_distractors"), kmax=settings["max_subcategories"])
                    for _ in range(n)]  # fmt: skip
        if cell.axis == "n_images":
            return [self.draw(rng, cell.get("n_images"), 0, kmax=settings["max_subcategories"]) for _ in range(n)]
        raise ValueError(f"unknown listing study {cell.axis!r}")

    def draw(self, rng: np.random.Generator, n_needles: int, n_distractors: int, k: int | None = None, kmax: int = 4) -> ItemDraft:
        idx = self.index
        for _ in range(MAX_TRIES):
            fam = self.families[self.parents[rng.integers(0, len(self.parents))]]
            most_per_image = fam.most_per_image
            if k is not None:
                size = k
                if size > fam.size or size > n_needles * most_per_image:
                    continue
            else:
                size = int(rng.integers(1, min(fam.size, kmax, n_needles * most_per_image) + 1))
            bits = rng.choice(fam.size, size=size, replace=False)
            subset = sum(1 << int(b) for b in bits)
            drawn = self.cover(rng, fam, subset, n_needles)
            if drawn is None:
                continue
            images, masks = drawn
            per_image = [fam.names(idx, m) for m in masks]
            if n_distractors:
                images += idx.draw_without(rng, idx.family_bits(fam.parent), n_distractors, exclude=images).tolist()
                per_image += [[] for _ in range(n_distractors)]
            roles = ["needle"] * n_needles + ["distractor"] * n_distractors
            images, roles, per_image = shuffled(rng, images, roles, per_image)
            answer = fam.names(idx, subset)
            return ItemDraft(images, roles, [fam.parent], ", ".join(answer), {"categories": answer, "per_image": per_image})
        raise SamplingError(f"{idx.source}/{idx.split}: could not build a Listing item with {n_needles} needle images "
                            f"and {k or f'up to {kmax}'} sub-categories in {MAX_TRIES} tries")  # fmt: skip

    @staticmethod
    def cover(rng: np.random.Generator, fam: Family, subset: int, n: int):
        """`n` distinct images whose children are subsets of `subset` and together are exactly `subset`:
        each slot first takes an image holding a not yet covered child, then any fitting image."""
        for _ in range(DRAWS_PER_SUBSET):
            images, masks, covered = [], [], 0
            for _slot in range(n):
                uncovered = subset & ~covered
                drawn = fam.draw(rng, subset, 1, overlaps=uncovered) if uncovered else fam.draw(rng, subset, 1)
                if drawn is None:
                    return None
                (image,), (mask,) = drawn
                if image in images:
                    break
                images.append(image)
                masks.append(mask)
                covered |= mask
            else:
                if covered == subset:
                    return images, masks
        return None
