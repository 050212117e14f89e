"""Listing: "Which kinds of {parent} appear in these images?" The answer is the sorted set of the
parent's sub-categories present in any image.

The answer set is drawn first (uniformly among subsets of the chosen size), then images whose
children are a subset of it until their union is exactly it, so answers are balanced by
construction. Distractor images hold no child of the parent (nor the parent class itself).
Every item of a cell is drawn at once (`Families.cover` takes each image slot for all of them).
"""

from __future__ import annotations

import numpy as np

from . import draws
from .config import Cell
from .families import require_families
from .items import ItemBatch, shuffle_rows
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 200


class ListingSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.families = require_families(index, "Listing")

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> ItemBatch:
        if cell.axis == "n_subcategories":
            return self.draw(rng, n, cell.get("n_images"), 0, k=cell.get("n_subcategories"))
        if cell.axis == "distractors":
            return self.draw(rng, n, settings["n_needle_images"], cell.get("n_distractors"), kmax=settings["max_subcategories"])
        if cell.axis == "n_images":
            return self.draw(rng, n, cell.get("n_images"), 0, kmax=settings["max_subcategories"])
        raise ValueError(f"unknown listing study {cell.axis!r}")

    def draw(self, rng: np.random.Generator, n: int, n_needles: int, n_distractors: int, k: int | None = None,
             kmax: int = 4) -> ItemBatch:  # fmt: skip
        idx, fams = self.index, self.families

        def attempt(rows: int):
            f = draws.uniform_below(rng, np.full(rows, len(fams.size)))
            most = n_needles * fams.most_per_image[f]
            if k is not None:
                size = np.full(rows, k)
                ok = (k <= fams.size[f]) & (k <= most)
            else:
                cap = np.minimum(np.minimum(fams.size[f], kmax), most)
                size, ok = 1 + draws.uniform_below(rng, cap), cap >= 1
            subsets = draws.bits_of(draws.random_subsets(rng, fams.size[f], np.where(ok, size, 0)))
            tried = np.flatnonzero(ok)
            images = np.full((rows, n_needles), -1, dtype=np.int64)
            masks = np.zeros((rows, n_needles), dtype=np.int64)
            images[tried], masks[tried], ok[tried] = fams.cover(rng, f[tried], subsets[tried], n_needles)
            return ok, {"family": f, "subset": subsets, "images": images, "masks": masks}

        got = draws.fill(n, MAX_TRIES, attempt)
        if got is None:
            raise SamplingError(f"{idx.source}/{idx.split}: could not build a Listing item with {n_needles} needle images "
                                f"and {k or f'up to {kmax}'} sub-categories in {MAX_TRIES} tries")  # fmt: skip
        f, images, masks = got["family"], got["images"], got["masks"]
        distractor = np.zeros((n, n_needles + n_distractors), dtype=bool)
        distractor[:, n_needles:] = True
        if n_distractors:
            free = idx.draw_free(rng, fams.avoid[f], np.full(n, n_distractors), taken=images)
            images = np.concatenate([images, free], axis=1)
            masks = np.concatenate([masks, np.zeros((n, n_distractors), dtype=np.int64)], axis=1)
        images, distractor, masks = shuffle_rows(rng, images, distractor, masks)
        parents = [idx.parent_names[p] for p in f.tolist()]
        answers = [idx.kind_names(p, s) for p, s in zip(f.tolist(), got["subset"].tolist())]
        structs = [{"categories": answer, "per_image": [idx.kind_names(p, m) for m in row]}
                   for p, answer, row in zip(f.tolist(), answers, masks.tolist())]  # fmt: skip
        return ItemBatch(images, distractor, [[p] for p in parents], [", ".join(a) for a in answers], structs)

