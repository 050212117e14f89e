"""Images grouped by which children of a parent they hold: the material of Listing and Odd-One.

For a parent with children c_0..c_m, every (unambiguous) image holding any child gets a bitmask
(bit j = holds c_j). Images are grouped by exact mask once per parent, so "draw an image whose
children are a subset of S" weighs the few groups within S instead of testing every image, and
does so for every item of a cell at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import draws
from .pools import SamplingError, SamplingIndex

DRAWS_PER_SUBSET = 8


@dataclass
class Families:
    """Every parent of `index.parent_names` (same positions), its images grouped by exact mask."""

    size: np.ndarray  # (families,) children per parent
    most_per_image: np.ndarray  # (families,) the most children one image holds (0: no usable image)
    avoid: np.ndarray  # (families, words) children and what is ambiguous: a distractor holds none of it
    group_ptr: np.ndarray  # (families + 1,) family f's groups are group_ptr[f]:group_ptr[f + 1], masks ascending
    group_mask: np.ndarray  # (groups,) int64: the children every image of the group holds, exactly
    image_ptr: np.ndarray  # (groups + 1,) group g's images are images[image_ptr[g]:image_ptr[g + 1]]
    images: np.ndarray

    @property
    def group_size(self) -> np.ndarray:
        return np.diff(self.image_ptr)

    def within(self, fams: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, group) pairs: every group of row r's family whose children are a subset of allowed[r]."""
        row, group = draws.expand_ranges(self.group_ptr[fams], self.group_ptr[fams + 1])
        fits = (self.group_mask[group] & ~allowed[row]) == 0
        return row[fits], group[fits]

    def draw(self, rng: np.random.Generator, pairs: tuple[np.ndarray, np.ndarray], eligible: np.ndarray, rows: int):
        """Per row, one image from the row's eligible groups, every such image equally likely (groups
        weighed by size): (groups, images, masks), group -1 / image -1 / mask 0 where none is eligible."""
        row, group = pairs
        chosen = draws.pick_weighted(rng, row, np.where(eligible, self.group_size[group], 0), rows)
        found = chosen >= 0
        g, image, mask = np.full(rows, -1, dtype=np.int64), np.full(rows, -1, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        g[found] = group[chosen[found]]
        start = self.image_ptr[g[found]]
        image[found] = self.images[start + draws.uniform_below(rng, self.image_ptr[g[found] + 1] - start)]
        mask[found] = self.group_mask[g[found]]
        return g, image, mask

    def cover(self, rng: np.random.Generator, fams: np.ndarray, subsets: np.ndarray, n: int):
        """Per row, `n` distinct images whose children are subsets of subsets[r] and together are exactly
        subsets[r]: each slot first takes an image holding a not yet covered child, then any fitting
        image; up to DRAWS_PER_SUBSET attempts. Returns (images, masks, ok): ok is False where no
        attempt covered the subset or no fitting image exists at all."""
        rows = len(fams)
        pairs = self.within(fams, subsets)
        images = np.full((rows, n), -1, dtype=np.int64)
        masks = np.zeros((rows, n), dtype=np.int64)
        done = np.zeros(rows, dtype=bool)
        dead = np.zeros(rows, dtype=bool)  # some slot found no fitting image: the subset cannot be covered
        for _ in range(DRAWS_PER_SUBSET):
            failed = done | dead
            if failed.all():
                break
            tried = np.full((rows, n), -1, dtype=np.int64)
            tried_masks = np.zeros((rows, n), dtype=np.int64)
            covered = np.zeros(rows, dtype=np.int64)
            for slot in range(n):
                uncovered = subsets & ~covered
                need = uncovered[pairs[0]]
                eligible = ((need == 0) | ((self.group_mask[pairs[1]] & need) != 0)) & ~failed[pairs[0]]
                g, image, mask = self.draw(rng, pairs, eligible, rows)
                none = ~failed & (g < 0)
                dead |= none
                failed = failed | none | (tried[:, :slot] == image[:, None]).any(axis=1)  # a repeat ends the attempt
                tried[:, slot], tried_masks[:, slot] = image, mask
                covered |= np.where(failed, 0, mask)
            success = ~failed & (covered == subsets)
            images[success], masks[success] = tried[success], tried_masks[success]
            done |= success
        return images, masks, done


def families(index: SamplingIndex) -> Families:
    """Every parent with at least two leaf children that occur in this split (built once per index,
    before generation forks its workers)."""
    key = "families"
    if key not in index.extra:
        index.extra[key] = _build(index)
    return index.extra[key]


def _build(index: SamplingIndex) -> Families:
    # sorts of int64 keys that pack two small numbers (numpy 2.4's hash-based np.unique is slower)
    sizes, most, avoid, group_ptr, group_masks, group_sizes, parts = [], [], [], [0], [], [], []
    for parent in index.parent_names:
        kinds = index.children_of[parent]
        # (image, bit) rows of the parent's children, sorted by image, then one mask per image
        rows = np.sort(np.concatenate([index.images_of(c).astype(np.int64) << 6 | j for j, c in enumerate(kinds)]))
        first = np.flatnonzero(np.concatenate([[True], (rows[1:] >> 6) != (rows[:-1] >> 6)])) if len(rows) else rows
        images = rows[first] >> 6
        mask = np.bitwise_or.reduceat(np.left_shift(1, rows & 63), first) if len(rows) else rows
        keep = ~index.has_any(images, index.bits(index.ambiguity_set(parent)))
        images, mask = images[keep], mask[keep]
        # groups: images by exact mask, masks ascending, images ascending within a group
        by_mask = np.sort(mask)
        masks = by_mask[np.concatenate([[True], by_mask[1:] != by_mask[:-1]])] if len(mask) else mask
        grouped = np.sort(np.searchsorted(masks, mask) << 32 | images)
        group_masks.append(masks)
        group_sizes.append(np.bincount(grouped >> 32, minlength=len(masks)))
        group_ptr.append(group_ptr[-1] + len(masks))
        parts.append((grouped & 0xFFFFFFFF).astype(np.int32))  # image indices, as the index keeps them
        sizes.append(len(kinds))
        most.append(max((bin(int(m)).count("1") for m in masks), default=0))
        avoid.append(index.bits(kinds) | index.bits(index.ambiguity_set(parent)))
    image_ptr = np.concatenate([[0], np.cumsum(np.concatenate(group_sizes))]) if group_sizes else np.zeros(1, np.int64)
    return Families(
        np.array(sizes, dtype=np.int64), np.array(most, dtype=np.int64),
        np.stack(avoid) if avoid else np.zeros((0, index.words), np.uint64), np.array(group_ptr, dtype=np.int64),
        np.concatenate(group_masks).astype(np.int64) if group_masks else np.zeros(0, np.int64), image_ptr.astype(np.int64),
        np.concatenate(parts) if parts else np.zeros(0, np.int32),
    )  # fmt: skip


def require_families(index: SamplingIndex, task: str) -> Families:
    """The families of a Listing / Odd-One sampler; an index without any is an error naming the fix."""
    if not index.children_of:
        raise SamplingError(f"{index.source}/{index.split}: no parent has two or more leaf children; {task} needs a "
                            "hierarchy (COCO super-categories, OpenImages Subcategory links)")  # fmt: skip
    return families(index)
