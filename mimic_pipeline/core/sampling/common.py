"""Common: "Which object category appears in every one of these images?"

The answer category is drawn uniformly (balanced answers), then a batch of image sets holding it
until one has no *second* category present in every image; if none has, the item starts again
with a new category. Every item of a cell takes its tries at once.
"""

from __future__ import annotations

import numpy as np

from . import draws
from .config import Cell
from .items import ItemBatch
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 200
BATCH = 32
CHUNKS = ((0, 2), (2, 8), (8, BATCH))  # the batch's image sets, tested a chunk at a time


class CommonSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.classes = np.flatnonzero(index.leaf)
        self.sole = sole_category(index)  # built here, before generation forks its workers

    def only_one_common(self, a: np.ndarray, sets: np.ndarray) -> np.ndarray:
        """(rows, sets): whether the images of sets[r, s] are distinct and have no category but a[r] in common."""
        rows, k, n_images = sets.shape
        if n_images == 1:  # one image: it must hold a[r] alone (a look-up instead of its bitset)
            return self.sole[sets[..., 0]] == a[:, None]
        common = self.index.present[sets[..., 0]]
        for j in range(1, n_images):
            common &= self.index.present[sets[..., j]]
        only_a = (common == self.index.class_bits[a][:, None, :]).all(axis=-1)
        return only_a & draws.distinct_rows(sets.reshape(rows * k, n_images)).reshape(rows, k)

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> ItemBatch:
        if cell.axis != "n_images":
            raise ValueError(f"unknown common study {cell.axis!r}")
        n_images = cell.get("n_images")
        idx = self.index

        def attempt(rows: int):
            a = self.classes[draws.uniform_below(rng, np.full(rows, len(self.classes)))]
            start, size = idx.cat_ptr[a], idx.cat_ptr[a + 1] - idx.cat_ptr[a]
            picks = start[:, None, None] + draws.uniform_below(rng, np.broadcast_to(size[:, None, None], (rows, BATCH, n_images)))
            cand = idx.cat_img[np.minimum(picks, len(idx.cat_img) - 1)].astype(np.int64)
            hits = np.zeros((rows, BATCH), dtype=bool)
            todo = np.flatnonzero(size >= n_images)
            for lo, hi in CHUNKS:  # most rows hit among the first few sets: test the others only where none did
                hits[todo, lo:hi] = self.only_one_common(a[todo], cand[todo, lo:hi])
                todo = todo[~hits[todo, lo:hi].any(axis=1)]
            first = np.argmax(hits, axis=1)
            return hits.any(axis=1), {"category": a, "images": cand[np.arange(rows), first]}

        got = draws.fill(n, MAX_TRIES, attempt)
        if got is None:
            raise SamplingError(f"{idx.source}/{idx.split}: no set of {n_images} images with exactly one common category "
                                f"found in {MAX_TRIES} tries")  # fmt: skip
        images = got["images"]
        names = [idx.names[a] for a in got["category"].tolist()]
        per_image = idx.names_in(images.ravel())
        structs = [{"category": name, "per_image": per_image[k * n_images : (k + 1) * n_images]} for k, name in enumerate(names)]
        return ItemBatch(images, np.zeros(images.shape, dtype=bool), [[] for _ in range(n)], names, structs)


def sole_category(index: SamplingIndex) -> np.ndarray:
    """Per image, the one category it holds (-1 where it holds none or several)."""
    out = np.full(index.n_images, -1, dtype=np.int32)
    single = np.flatnonzero(np.bitwise_count(index.present).sum(axis=1, dtype=np.int32) == 1)
    word = np.argmax(index.present[single] != 0, axis=1)
    bit = np.log2(index.present[single, word].astype(np.float64)).astype(np.int32)  # exact for a power of two
    out[single] = word * 64 + bit
    return out
