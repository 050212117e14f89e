"""Images grouped by which children of a parent they hold: the material of Listing and Odd-One.

For a parent with children c_0..c_m, every (unambiguous) image holding any child gets a bitmask
(bit j = holds c_j). Images are grouped by exact mask once per parent, so "draw an image whose
children are a subset of S" walks the few distinct masks instead of every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pools import SamplingIndex


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
        picks = np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right")
        images = [int(self.groups[g][rng.integers(0, len(self.groups[g]))]) for g in groups[picks].tolist()]
        return images, self.masks[groups[picks]].tolist()

    def _choice(self, allowed: int, required: int, overlaps: int):
        key = (allowed, required, overlaps)
        if key not in self._cache:
            ok = ((self.masks & ~np.int64(allowed)) == 0) & ((self.masks & required) == required)
            if overlaps:
                ok &= (self.masks & overlaps) != 0
            groups = np.flatnonzero(ok)
            self._cache[key] = (groups, np.cumsum([len(self.groups[g]) for g in groups])) if len(groups) else None
        return self._cache[key]


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


def popcount(x: int) -> int:
    return bin(int(x)).count("1")
