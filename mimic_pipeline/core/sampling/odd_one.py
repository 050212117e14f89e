"""Odd-One: "Among the {parent} in these images, which one appears in only a minority of the images?"

The answer child X is drawn uniformly, with 1 or 2 majority siblings; X is placed in fewer than
half of the images, the siblings' images are drawn so each appears in more than half. Every other
child of the parent is absent. At least 3 images.
"""

from __future__ import annotations

import numpy as np

from .config import Cell
from .families import require_families
from .items import ItemDraft, shuffled
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 300


class OddOneSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.families = require_families(index, "Odd-One")
        self.parents = sorted(self.families)

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> list[ItemDraft]:
        if cell.axis != "n_images":
            raise ValueError(f"unknown odd_one study {cell.axis!r}")
        n_images = cell.get("n_images")
        if n_images < 3:
            raise ValueError("Odd-One needs at least 3 images (a minority and a majority)")
        return [self.draw(rng, n_images, settings["majority_children"]) for _ in range(n)]

    def draw(self, rng: np.random.Generator, n: int, majority_sizes: list[int]) -> ItemDraft:
        idx = self.index
        for _ in range(MAX_TRIES):
            fam = self.families[self.parents[rng.integers(0, len(self.parents))]]
            x = int(rng.integers(0, fam.size))
            sizes = [m for m in majority_sizes if m <= fam.size - 1]
            if not sizes:
                continue
            others = [j for j in range(fam.size) if j != x]
            majority = rng.choice(others, size=int(rng.choice(sizes)), replace=False)
            m_mask = sum(1 << int(j) for j in majority)
            n_x = int(rng.integers(1, (n + 1) // 2))  # 1 <= n_x < n/2
            with_x = fam.draw(rng, m_mask | (1 << x), n_x, required=1 << x)
            without_x = fam.draw(rng, m_mask, n - n_x)
            if with_x is None or without_x is None:
                continue
            images, masks = with_x[0] + without_x[0], with_x[1] + without_x[1]
            if len(set(images)) < n:
                continue
            presence = {j: sum(m >> j & 1 for m in masks) for j in range(fam.size)}
            if any(0 < c <= n / 2 for j, c in presence.items() if j != x):
                continue
            names = {j: idx.names[int(fam.children[j])] for j in range(fam.size)}
            per_image = [fam.names(idx, m) for m in masks]
            images, roles, per_image = shuffled(rng, images, ["needle"] * n, per_image)
            struct = {"category": names[x], "parent": fam.parent,
                      "presence": {names[j]: c for j, c in presence.items() if c}, "per_image": per_image}  # fmt: skip
            return ItemDraft(images, roles, [fam.parent], names[x], struct)
        raise SamplingError(f"{idx.source}/{idx.split}: could not build an Odd-One item over {n} images in {MAX_TRIES} tries")
