"""Images grouped by which children of a parent they hold: the material of Listing and Odd-One.

For a parent with children c_0..c_m, every (unambiguous) image holding any child gets a bitmask
(bit j = holds c_j). Images are grouped by exact mask once per parent, so "draw an image whose
children are a subset of S" walks the few distinct masks instead of every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pools import SamplingIndex


@dataclass
class Family:
    parent: str
    children: np.ndarray  # category indices; bit j of a mask is children[j]
    masks: np.ndarray  # distinct non-zero masks (int64)
    groups: list[np.ndarray]  # images holding exactly that mask

    @property
    def size(self) -> int:
        return len(self.children)

    def names(self, index: SamplingIndex, mask: int) -> list[str]:
        return sorted(index.names[int(c)] for j, c in enumerate(self.children) if mask >> j & 1)

    def draw(self, rng: np.random.Generator, allowed, n: int, required: int = 0) -> np.ndarray | None:
        """`n` images (with replacement across calls; distinctness checked by the caller) whose mask
        is a subset of `allowed` (an int mask or an array of admissible masks) and contains `required`.
        None when no image qualifies."""
        if isinstance(allowed, (int, np.integer)):
            ok = ((self.masks & ~np.int64(allowed)) == 0) & ((self.masks & required) == required)
        else:
            ok = np.isin(self.masks, allowed) & ((self.masks & required) == required)
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            return None
        sizes = np.array([len(self.groups[i]) for i in idx], dtype=float)
        picks = rng.choice(idx, size=n, p=sizes / sizes.sum())
        return np.array([self.groups[g][rng.integers(0, len(self.groups[g]))] for g in picks], dtype=np.int64)

    def mask_of(self, images: np.ndarray) -> np.ndarray:
        """The mask of each image (0 for images holding no child)."""
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            all_images = np.concatenate(self.groups)
            all_masks = np.concatenate([np.full(len(g), m, dtype=np.int64) for g, m in zip(self.groups, self.masks)])
            order = np.argsort(all_images)
            lookup = self._lookup = (all_images[order], all_masks[order])
        imgs, masks = lookup
        pos = np.clip(np.searchsorted(imgs, images), 0, len(imgs) - 1)
        return np.where(imgs[pos] == images, masks[pos], 0)


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
