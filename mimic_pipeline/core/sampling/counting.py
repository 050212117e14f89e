"""Counting: "How many X are there in these images?" The answer is the total instance count.

Studies: `spread` (a fixed total split over the images by each integer partition), `distractors`
(needles concentrated in one image or one per image, plus images without the class),
`concepts` (1-3 classes counted together), `n_images`.

Answers are balanced by construction: the total is drawn uniformly first and the images are
chosen to add up to it (exact-count pools per class), except in `concepts`, where several classes
must match at once and the items are instead drawn freely and then stratified by answer.
"""

from __future__ import annotations

import numpy as np

from .config import Cell
from .items import ItemDraft, shuffled
from .pools import SamplingError, SamplingIndex

MAX_TRIES = 50


class CountingSampler:
    def __init__(self, index: SamplingIndex):
        self.index = index
        self._pools: dict[tuple[int, int], np.ndarray] = {}
        self._feasible: dict[tuple[int, ...], list[int]] = {}
        self._max_count: dict[int, int] = {}
        self.classes = [c for c in range(len(index.names)) if index.leaf[c]]

    def pool(self, c: int, k: int) -> np.ndarray:
        if (c, k) not in self._pools:
            self._pools[(c, k)] = self.index.count_pool(c, k)
        return self._pools[(c, k)]

    def feasible(self, c: int, counts: list[int]) -> bool:
        needs: dict[int, int] = {}
        for k in counts:
            if k:
                needs[k] = needs.get(k, 0) + 1
        return all(len(self.pool(c, k)) >= m for k, m in needs.items())

    def compose(self, rng: np.random.Generator, c: int, counts: list[int]) -> ItemDraft:
        """Images whose counts of class `c` are exactly `counts` (0 = an image without the class)."""
        images: list[int] = []
        per_image: list[int] = []
        for k in sorted(set(counts) - {0}):
            m = counts.count(k)
            images += rng.choice(self.pool(c, k), size=m, replace=False).tolist()
            per_image += [k] * m
        zeros = counts.count(0)
        if zeros:
            avoid = self.index.bits({c} | self.index.ancestors[c])
            images += self.index.draw_without(rng, avoid, zeros, exclude=images).tolist()
            per_image += [0] * zeros
        roles = ["needle" if k else "distractor" for k in per_image]
        images, roles, per_image = shuffled(rng, images, roles, per_image)
        name = self.index.names[c]
        return ItemDraft(images, roles, [name], str(sum(per_image)), {"total": sum(per_image), "counts": {name: per_image}})

    def pick_class(self, rng: np.random.Generator, counts: list[int]) -> int:
        key = tuple(sorted(counts))
        if key not in self._feasible:
            self._feasible[key] = [c for c in self.classes if self.feasible(c, counts)]
        ok = self._feasible[key]
        if not ok:
            raise SamplingError(f"{self.index.source}/{self.index.split}: no class has enough images for per-image "
                                f"counts {counts} (each count needs images holding exactly that many)")  # fmt: skip
        return int(ok[rng.integers(0, len(ok))])

    def max_count(self, c: int) -> int:
        """The largest count of `c` that some usable image holds (0 if none)."""
        if c not in self._max_count:
            counts = self.index.usable(c)[1]
            self._max_count[c] = int(counts.max()) if len(counts) else 0
        return self._max_count[c]

    def sample(self, cell: Cell, settings: dict, rng: np.random.Generator, n: int) -> list[ItemDraft]:
        if cell.axis == "spread":
            counts = [int(x) for x in cell.get("spread").split("-")]
            return [self.compose(rng, self.pick_class(rng, counts), counts) for _ in range(n)]
        if cell.axis == "distractors":
            out = []
            for _ in range(n):
                total = int(rng.choice(settings["totals"]))
                needles = [total] if cell.get("placement") == "concentrated" else [1] * total
                counts = needles + [0] * cell.get("n_distractors")
                out.append(self.compose(rng, self.pick_class(rng, counts), counts))
            return out
        if cell.axis == "n_images":
            return [self.sample_n_images(rng, cell.get("n_images"), settings["max_total"]) for _ in range(n)]
        if cell.axis == "concepts":
            return self.sample_concepts(rng, cell.get("n_concepts"), cell.get("n_images"), n)
        raise ValueError(f"unknown counting study {cell.axis!r}")

    def sample_n_images(self, rng: np.random.Generator, n_images: int, max_total: int) -> ItemDraft:
        """Total uniform in 1..max_total (as far as the class allows), split over a random number of needles."""
        for _ in range(MAX_TRIES):
            c = int(self.classes[rng.integers(0, len(self.classes))])
            kmax = self.max_count(c)
            if kmax == 0:
                continue
            total = int(rng.integers(1, min(max_total, n_images * kmax) + 1))
            lo, hi = -(-total // kmax), min(n_images, total)
            m = int(rng.integers(lo, hi + 1))
            parts = random_composition(rng, total, m, kmax)
            counts = parts + [0] * (n_images - m)
            if self.feasible(c, counts):
                return self.compose(rng, c, counts)
        raise SamplingError(f"{self.index.source}/{self.index.split}: could not compose a counting item over {n_images} "
                            f"images in {MAX_TRIES} tries; the index has too few images per count")  # fmt: skip

    def sample_concepts(self, rng: np.random.Generator, q: int, n_images: int, n: int) -> list[ItemDraft]:
        """Several classes counted together: free draws, then stratified so every total is equally common."""
        if q > len(self.classes):
            raise SamplingError(f"{q} classes asked for, the index has {len(self.classes)}")
        drafts = []
        for _ in range(3 * n):
            drafts.append(self.draw_concepts(rng, q, n_images))
        return stratify_by_answer(rng, drafts, n)

    def draw_concepts(self, rng: np.random.Generator, q: int, n_images: int) -> ItemDraft:
        idx = self.index
        for _ in range(MAX_TRIES):
            classes = sorted(int(c) for c in rng.choice(self.classes, size=q, replace=False))
            usable = [idx.usable_images(c) for c in classes]  # cached on the index
            if any(len(u) == 0 for u in usable):
                continue
            # each image holds at least one queried class; classes drawn per slot, then images
            slots = rng.integers(0, q, size=n_images)
            images = np.array([usable[s][rng.integers(0, len(usable[s]))] for s in slots])
            if len(set(images.tolist())) < n_images:
                continue
            per_class = {idx.names[c]: [image_count(idx, c, int(i)) for i in images] for c in classes}
            if any(k is None for ks in per_class.values() for k in ks):
                continue  # a crowd box of another queried class: not countable
            ancestors = set().union(*(idx.ancestors[c] for c in classes))
            if ancestors and idx.has_any(images, idx.bits(ancestors)).any():
                continue
            total = sum(sum(ks) for ks in per_class.values())
            names = [idx.names[c] for c in classes]
            return ItemDraft(images.tolist(), ["needle"] * n_images, names, str(total), {"total": total, "counts": per_class})
        raise SamplingError(f"{idx.source}/{idx.split}: could not draw {q} co-countable classes over {n_images} images")


def image_count(index: SamplingIndex, c: int, image: int) -> int | None:
    """Instances of `c` in `image` (0 if absent); None if the image has a crowd box of `c`."""
    count, crowd = index.entries(image).get(c, (0, False))
    return None if crowd else count


def random_composition(rng: np.random.Generator, total: int, parts: int, kmax: int) -> list[int]:
    """`total` as `parts` positive integers each <= kmax, uniformly over the ways to place the excess."""
    out = [1] * parts
    for _ in range(total - parts):
        open_slots = [i for i, v in enumerate(out) if v < kmax]
        out[open_slots[int(rng.integers(0, len(open_slots)))]] += 1
    return out


def stratify_by_answer(rng: np.random.Generator, drafts: list[ItemDraft], n: int) -> list[ItemDraft]:
    """Pick `n` drafts taking answers in turn, so the answer distribution is as flat as the draws allow."""
    buckets: dict[str, list[ItemDraft]] = {}
    for d in drafts:
        buckets.setdefault(d.answer, []).append(d)
    keys = sorted(buckets, key=lambda a: (len(a), a))
    out: list[ItemDraft] = []
    while len(out) < n:
        progressed = False
        for a in keys:
            if buckets[a] and len(out) < n:
                out.append(buckets[a].pop())
                progressed = True
        if not progressed:
            raise SamplingError(f"only {len(out)} of {n} items could be drawn")
    order = rng.permutation(len(out))
    return [out[i] for i in order]

