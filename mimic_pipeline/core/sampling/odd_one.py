"""Odd-One: "Among the {parent} in these images, which one appears in only a minority of the images?"

The answer child X is drawn uniformly, with 1 or 2 majority siblings; X is placed in fewer than
half of the images, the siblings' images are drawn so each appears in more than half. Every other
child of the parent is absent. At least 3 images. Every item of a cell is drawn at once.
"""

from __future__ import annotations

import numpy as np

from . import draws
from .config import Cell
from .families import require_families
from .items import ItemBatch, shuffle_rows
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 300


class OddOneSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.families = require_families(index, "Odd-One")

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> ItemBatch:
        if cell.axis != "n_images":
            raise ValueError(f"unknown odd_one study {cell.axis!r}")
        n_images = cell.get("n_images")
        if n_images < 3:
            raise ValueError("Odd-One needs at least 3 images (a minority and a majority)")
        return self.draw(rng, n, n_images, settings["majority_children"])

    def draw(self, rng: np.random.Generator, n: int, n_images: int, majority_sizes: list[int]) -> ItemBatch:
        idx, fams = self.index, self.families
        sizes = np.asarray(majority_sizes, dtype=np.int64)

        def attempt(rows: int):
            f = draws.uniform_below(rng, np.full(rows, len(fams.size)))
            x = draws.uniform_below(rng, fams.size[f])
            # the number of majority siblings: uniform among the configured sizes the family allows
            allowed = sizes[None, :] <= fams.size[f][:, None] - 1
            which = draws.uniform_below(rng, allowed.sum(axis=1))
            m = sizes[np.argmax(allowed & (np.cumsum(allowed, axis=1) == which[:, None] + 1), axis=1)]
            ok = allowed.any(axis=1)
            siblings = draws.random_subsets(rng, fams.size[f] - 1, np.where(ok, m, 0))
            majority = draws.bits_of(np.where(siblings >= x[:, None], siblings + 1, siblings))  # skip X's own bit
            n_x = 1 + draws.uniform_below(rng, np.full(rows, (n_images + 1) // 2 - 1))  # 1 <= n_x < n/2
            x_bit = np.left_shift(1, x)
            pairs = fams.within(f, majority | x_bit)
            with_x = (fams.group_mask[pairs[1]] & x_bit[pairs[0]]) != 0
            images = np.full((rows, n_images), -1, dtype=np.int64)
            masks = np.zeros((rows, n_images), dtype=np.int64)
            for slot in range(n_images):  # the first n_x images hold X (and maybe siblings), the others siblings only
                g, images[:, slot], masks[:, slot] = fams.draw(rng, pairs, with_x == (slot < n_x)[pairs[0]], rows)
                ok &= g >= 0
            children = np.arange(fams.size.max())
            presence = ((masks[:, :, None] >> children) & 1).sum(axis=1)  # images holding each child
            minority_sibling = (presence > 0) & (2 * presence <= n_images) & (children != x[:, None])
            ok &= draws.distinct_rows(images) & ~minority_sibling.any(axis=1)
            return ok, {"family": f, "answer": x, "images": images, "masks": masks, "presence": presence}

        got = draws.fill(n, MAX_TRIES, attempt)
        if got is None:
            raise SamplingError(f"{idx.source}/{idx.split}: could not build an Odd-One item over {n_images} images in {MAX_TRIES} tries")
        f, x, presence = got["family"].tolist(), got["answer"].tolist(), got["presence"]
        images, masks = shuffle_rows(rng, got["images"], got["masks"])
        structs, answers = [], []
        for k, (p, j, row) in enumerate(zip(f, x, masks.tolist())):
            kinds = idx.children_of[idx.parent_names[p]]
            answers.append(idx.names[kinds[j]])
            structs.append({"category": answers[-1], "parent": idx.parent_names[p],
                            "presence": {idx.names[kinds[b]]: int(presence[k, b]) for b in np.flatnonzero(presence[k])},
                            "per_image": [idx.kind_names(p, mask) for mask in row]})  # fmt: skip
        return ItemBatch(images, np.zeros(images.shape, dtype=bool), [[idx.parent_names[p]] for p in f], answers, structs)
