"""Counting: "How many X are there in these images?" The answer is the total instance count.

Studies: `spread` (a fixed total split over the images by each integer partition), `distractors`
(needles concentrated in one image or one per image, plus images without the class),
`concepts` (1-3 classes counted together), `n_images`.

Answers are balanced by construction: the total is drawn uniformly first and the images are
chosen to add up to it (exact-count pools per class), except in `concepts`, where several classes
must match at once and the items are instead drawn freely and then stratified by answer. Every
item of a cell is drawn at once: per-image counts as one (items x images) array, then the images.
"""

from __future__ import annotations

import numpy as np

from . import draws
from .config import Cell
from .items import ItemBatch, shuffle_rows
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 50


class CountingSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self.pools = index.count_pools  # built here, before generation forks its workers
        self.classes = np.flatnonzero(index.leaf)
        self._feasible: dict[tuple[int, ...], np.ndarray] = {}

    def feasible(self, c: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Whether class c[r] has enough images of each count in counts[r] (0 = an image without it, -1 none)."""
        most = self.pools.start.shape[1] - 2
        ok = (counts <= most).all(axis=1)
        for k in np.unique(counts[(counts > 0) & (counts <= most)]).tolist():
            ok &= (counts == k).sum(axis=1) <= self.pools.sizes(c, k)
        return ok

    def pick_classes(self, rng: np.random.Generator, counts: list[int], n: int) -> np.ndarray:
        """`n` classes drawn uniformly among those with images for every count of the pattern."""
        key = tuple(sorted(counts))
        if key not in self._feasible:
            pattern = np.broadcast_to(np.array(key, dtype=np.int64), (len(self.classes), len(key)))
            self._feasible[key] = self.classes[self.feasible(self.classes, pattern)]
        ok = self._feasible[key]
        if not len(ok):
            raise SamplingError(f"{self.index.source}/{self.index.split}: no class has enough images for per-image "
                                f"counts {counts} (each count needs images holding exactly that many)")  # fmt: skip
        return ok[draws.uniform_below(rng, np.full(n, len(ok)))]

    def compose(self, rng: np.random.Generator, classes: np.ndarray, counts: np.ndarray) -> ItemBatch:
        """Per row, images whose counts of class classes[r] are exactly counts[r] (0 = an image without
        the class, -1 = no image), in a random order."""
        images = np.full(counts.shape, -1, dtype=np.int64)
        for k in np.unique(counts[counts > 0]).tolist():
            at = counts == k
            start = self.pools.start[classes, k]
            picks = draws.random_subsets(rng, self.pools.sizes(classes, k), at.sum(axis=1))
            images[at] = self.pools.images[(start[:, None] + picks)[picks >= 0]]
        without = counts == 0
        if without.any():
            free = self.index.draw_free(rng, self.index.counted_bits[classes], without.sum(axis=1), taken=images)
            images[without] = free[free >= 0]
        images, counts = shuffle_rows(rng, images, counts, lengths=(counts >= 0).sum(axis=1))
        names = [self.index.names[c] for c in classes.tolist()]
        totals = np.where(counts > 0, counts, 0).sum(axis=1).tolist()
        per_image = [row[row >= 0].tolist() for row in counts]
        structs = [{"total": t, "counts": {name: ks}} for name, t, ks in zip(names, totals, per_image)]
        return ItemBatch(images, counts == 0, [[name] for name in names], [str(t) for t in totals], structs)

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> ItemBatch:
        if cell.axis == "spread":
            counts = [int(x) for x in cell.get("spread").split("-")]
            return self.compose(rng, self.pick_classes(rng, counts, n), np.tile(counts, (n, 1)))
        if cell.axis == "distractors":
            return self.sample_distractors(rng, cell, settings["totals"], n)
        if cell.axis == "n_images":
            return self.sample_n_images(rng, cell.get("n_images"), settings["max_total"], n)
        if cell.axis == "concepts":
            return self.sample_concepts(rng, cell.get("n_concepts"), cell.get("n_images"), n)
        raise ValueError(f"unknown counting study {cell.axis!r}")

    def sample_distractors(self, rng: np.random.Generator, cell: Cell, totals: list[int], n: int) -> ItemBatch:
        """A total drawn per item; its needles all in one image or one instance per image, then distractors."""
        drawn = np.asarray(totals, dtype=np.int64)[draws.uniform_below(rng, np.full(n, len(totals)))]
        patterns = {t: ([t] if cell.get("placement") == "concentrated" else [1] * t) + [0] * cell.get("n_distractors")
                    for t in sorted(set(drawn.tolist()))}  # fmt: skip
        counts = np.full((n, max((len(p) for p in patterns.values()), default=0)), -1, dtype=np.int64)
        classes = np.zeros(n, dtype=np.int64)
        for t, pattern in patterns.items():
            rows = np.flatnonzero(drawn == t)
            counts[rows, : len(pattern)] = pattern
            classes[rows] = self.pick_classes(rng, pattern, len(rows))
        return self.compose(rng, classes, counts)

    def sample_n_images(self, rng: np.random.Generator, n_images: int, max_total: int, n: int) -> ItemBatch:
        """Total uniform in 1..max_total (as far as the class allows), split over a random number of needles."""

        def attempt(rows: int):
            c = self.classes[draws.uniform_below(rng, np.full(rows, len(self.classes)))]
            kmax = self.pools.max_count[c]
            cap = np.maximum(kmax, 1)
            total = 1 + draws.uniform_below(rng, np.minimum(max_total, n_images * cap))
            lo, hi = -(-total // cap), np.minimum(n_images, total)
            m = lo + draws.uniform_below(rng, hi - lo + 1)
            counts = random_compositions(rng, total, m, cap, n_images)
            return (kmax > 0) & self.feasible(c, counts), {"classes": c, "counts": counts}

        got = draws.fill(n, MAX_TRIES, attempt)
        if got is None:
            raise SamplingError(f"{self.index.source}/{self.index.split}: could not compose a counting item over {n_images} "
                                f"images in {MAX_TRIES} tries; the index has too few images per count")  # fmt: skip
        return self.compose(rng, got["classes"], got["counts"])

    def sample_concepts(self, rng: np.random.Generator, q: int, n_images: int, n: int) -> ItemBatch:
        """Several classes counted together: free draws (3 per item), then stratified so every total is
        equally common."""
        idx, pools = self.index, self.pools
        if q > len(self.classes):
            raise SamplingError(f"{q} classes asked for, the index has {len(self.classes)}")

        def attempt(rows: int):
            classes = np.sort(self.classes[draws.random_subsets(rng, np.full(rows, len(self.classes)), q)], axis=1)
            first, usable = pools.start[classes, 1], pools.start[classes, -1] - pools.start[classes, 1]
            # each image holds at least one queried class: a class drawn per slot, then one of its images
            slot = draws.uniform_below(rng, np.full((rows, n_images), q))
            at = np.take_along_axis(first, slot, axis=1) + draws.uniform_below(rng, np.take_along_axis(usable, slot, axis=1))
            images = pools.images[np.minimum(at, len(pools.images) - 1)].astype(np.int64)
            counts, crowd = idx.counts_in(images[:, None, :], classes[:, :, None])  # (rows, classes, images)
            # a crowd box of another queried class, or a box of a class above one, makes an image uncountable
            above = np.bitwise_or.reduce(idx.counted_bits[classes] & ~idx.class_bits[classes], axis=1)
            ok = (usable > 0).all(axis=1) & draws.distinct_rows(images) & ~crowd.any(axis=(1, 2))
            ok &= ~idx.has_any_of_row(images, above).any(axis=1)
            return ok, {"classes": classes, "images": images, "counts": counts}

        got = draws.fill(3 * n, MAX_TRIES, attempt)
        if got is None:
            raise SamplingError(f"{idx.source}/{idx.split}: could not draw {q} co-countable classes over {n_images} images")
        totals = got["counts"].sum(axis=(1, 2))
        keep = draws.stratified(rng, totals, n)
        if len(keep) < n:
            raise SamplingError(f"only {len(keep)} of {n} items could be drawn")
        classes, images, counts = got["classes"][keep], got["images"][keep], got["counts"][keep]
        names = [[idx.names[c] for c in row] for row in classes.tolist()]
        structs = [{"total": int(t), "counts": dict(zip(ns, ks))}
                   for t, ns, ks in zip(totals[keep].tolist(), names, counts.tolist())]  # fmt: skip
        return ItemBatch(images, np.zeros(images.shape, dtype=bool), names, [str(s["total"]) for s in structs], structs)


def random_compositions(rng: np.random.Generator, total: np.ndarray, parts: np.ndarray, kmax: np.ndarray, width: int) -> np.ndarray:
    """Per row, total[r] as parts[r] positive integers each <= kmax[r] (then zeros up to `width`),
    uniformly over the ways to place the excess: each unit goes to a random slot not yet full."""
    slots = np.arange(width)
    out = (slots < parts[:, None]).astype(np.int64)
    excess = total - parts
    for unit in range(int(excess.max()) if len(excess) else 0):
        open_ = (out < kmax[:, None]) & (slots < parts[:, None])
        which = draws.uniform_below(rng, open_.sum(axis=1))
        at = np.argmax(open_ & (np.cumsum(open_, axis=1) == which[:, None] + 1), axis=1)
        out[np.flatnonzero(unit < excess), at[unit < excess]] += 1
    return out
