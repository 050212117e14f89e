"""Images grouped by which children of a parent they hold: the material of Listing and Odd-One.

For a parent with children c_0..c_m, every (unambiguous) image holding any child gets a bitmask
(bit j = holds c_j). Images are grouped by exact mask once per parent, so "draw an image whose
children are a subset of S" walks the few distinct masks instead of every image.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .pools import SamplingError, SamplingIndex


CACHE_LIMIT = 100_000


@dataclass
class Family:
    parent: str
    children: np.ndarray  # category indices; bit j of a mask is children[j]
    masks: np.ndarray  # distinct non-zero masks (int64)
    groups: list[np.ndarray]  # images holding exactly that mask
    _cache: dict = field(default_factory=dict, repr=False)  # (allowed, required, overlaps) -> groups, cumulative sizes

    @property
    def size(self) -> int:
        return len(self.children)

    def names(self, index: SamplingIndex, mask: int) -> list[str]:
        """The sorted child names of a mask (cached: few distinct masks, asked for on every item)."""
        key = ("names", int(mask))
        if key not in self._cache:
            self._cache[key] = sorted(index.names[int(c)] for j, c in enumerate(self.children) if mask >> j & 1)
        return list(self._cache[key])

    @property
    def most_per_image(self) -> int:
        """The most children any one image holds."""
        if "most" not in self._cache:
            self._cache["most"] = max(popcount(m) for m in self.masks)
        return self._cache["most"]

    def draw(self, rng: np.random.Generator, allowed: int, n: int, required: int = 0, overlaps: int = 0):
        """`n` images whose children are a subset of `allowed`, hold all of `required` and at least one
        of `overlaps` (when given); returns (images, masks), or None when no image qualifies.
        Groups are picked in proportion to their size, so every qualifying image is equally likely;
        images may repeat across the n draws (callers check distinctness)."""
        choice = self._choice(allowed, required, overlaps)
        if choice is None:
            return None
        groups, cumulative = choice
        # plain Python per draw: these are called ~10 times per item, where numpy's per-call cost dominates
        images, masks = [], []
        for u in rng.random(n).tolist() if n > 1 else [rng.random()]:
            g = groups[bisect_right(cumulative, u * cumulative[-1])]
            group = self.groups[g]
            images.append(int(group[int(rng.random() * len(group))]))
            masks.append(self.mask_list[g])
        return images, masks

    def _choice(self, allowed: int, required: int, overlaps: int):
        key = (allowed, required, overlaps)
        if key not in self._cache:
            if len(self._cache) > CACHE_LIMIT:  # bounded: a large family can have very many subsets
                self._cache.clear()
            ok = ((self.masks & ~np.int64(allowed)) == 0) & ((self.masks & required) == required)
            if overlaps:
                ok &= (self.masks & overlaps) != 0
            groups = np.flatnonzero(ok).tolist()
            self._cache[key] = (groups, np.cumsum([len(self.groups[g]) for g in groups]).tolist()) if groups else None
        return self._cache[key]

    @cached_property
    def mask_list(self) -> list[int]:
        return self.masks.tolist()


def families(index: SamplingIndex) -> dict[str, Family]:
    """Every parent with at least two leaf children that occur in this split."""
    key = "families"
    if key not in index.extra:
        out = {}
        for parent in sorted(index.children_of):
            children, images, masks = index.parent_masks(parent)
            uniq, inverse = np.unique(masks, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
            groups = [images[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
            out[parent] = Family(parent, children, uniq.astype(np.int64), groups)
        index.extra[key] = out
    return index.extra[key]


def require_families(index: SamplingIndex, task: str) -> dict[str, Family]:
    """The families of a Listing / Odd-One sampler; an index without any is an error naming the fix."""
    found = families(index)
    if not found:
        raise SamplingError(f"{index.source}/{index.split}: no parent has two or more leaf children; {task} needs a "
                            "hierarchy (COCO super-categories, OpenImages Subcategory links)")  # fmt: skip
    return found


def popcount(x: int) -> int:
    return bin(int(x)).count("1")
