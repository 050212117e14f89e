"""Random draws for every item of a cell at once: the samplers' shared vectorised steps.

A sampler describes one *attempt* at an item as array operations over many rows (one row per
item still to draw); `fill` repeats attempts for the rows that failed, so each item is drawn
exactly as a per-item retry loop would draw it, at numpy's speed instead of Python's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Attempt = Callable[[int], tuple[np.ndarray, dict[str, np.ndarray]]]  # rows -> (accepted, values per row)


def fill(n: int, tries: int, attempt: Attempt) -> dict[str, np.ndarray] | None:
    """`n` rows of values, each from the first of up to `tries` attempts that `attempt` accepts (None
    when some row was still refused after `tries`). Every round makes one attempt per row still
    missing; rows keep their place, so the result does not depend on how many rounds it took."""
    out: dict[str, np.ndarray] | None = None
    missing = np.arange(n)
    for _ in range(tries):
        if not len(missing):
            break
        accepted, values = attempt(len(missing))
        if out is None:
            out = {k: np.zeros((n, *v.shape[1:]), dtype=v.dtype) for k, v in values.items()}
        for k, v in values.items():
            out[k][missing[accepted]] = v[accepted]
        missing = missing[~accepted]
    return out if n == 0 or (out is not None and not len(missing)) else None


def expand_ranges(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position of the ranges [start[i], stop[i]) in turn: (the range each belongs to, position)."""
    sizes = stop - start
    owner = np.repeat(np.arange(len(sizes)), sizes)
    return owner, np.arange(len(owner)) + np.repeat(start - (np.cumsum(sizes) - sizes), sizes)


def uniform_below(rng: np.random.Generator, highs: np.ndarray) -> np.ndarray:
    """One integer uniform in [0, highs[i]) per entry (0 where highs[i] <= 0)."""
    highs = np.asarray(highs, dtype=np.int64)
    return np.minimum((rng.random(highs.shape) * highs).astype(np.int64), np.maximum(highs - 1, 0))


def random_subsets(rng: np.random.Generator, sizes: np.ndarray, k) -> np.ndarray:
    """Per row, k[r] distinct integers drawn uniformly from range(sizes[r]) (k[r] <= sizes[r]), by
    Floyd's algorithm with each step taken for every row at once; (rows, max k), -1 after a row's k[r]."""
    sizes = np.asarray(sizes, dtype=np.int64)
    k = np.broadcast_to(np.asarray(k, dtype=np.int64), sizes.shape)
    out = np.full((len(sizes), int(k.max()) if len(k) else 0), -1, dtype=np.int64)
    for step in range(out.shape[1]):
        top = sizes - k + step  # Floyd: draw t in [0, top]; if it is taken already, take top itself
        t = uniform_below(rng, top + 1)
        taken = (out[:, :step] == t[:, None]).any(axis=1)
        out[:, step] = np.where(step < k, np.where(taken, top, t), -1)
    return out


def bits_of(positions: np.ndarray) -> np.ndarray:
    """Per row, the int64 mask with the bits at `positions` set (-1 entries ignored)."""
    return np.where(positions >= 0, np.left_shift(1, np.maximum(positions, 0)), 0).sum(axis=1).astype(np.int64)


def pick_weighted(rng: np.random.Generator, owner: np.ndarray, weights: np.ndarray, rows: int) -> np.ndarray:
    """Per row, one of its entries (`owner` gives each entry's row, sorted) drawn with probability
    proportional to `weights`; -1 for rows whose weights are all 0."""
    running = np.concatenate([[0], np.cumsum(weights, dtype=np.int64)])  # weight before each entry
    first = np.searchsorted(owner, np.arange(rows), side="left")
    last = np.searchsorted(owner, np.arange(rows), side="right")
    before, total = running[first], running[last] - running[first]
    # the entry whose span of the running sum holds a uniform point of the row's total (0-weight entries have none)
    chosen = np.searchsorted(running, before + uniform_below(rng, total), side="right") - 1
    return np.where(total > 0, chosen, -1)


def distinct_rows(images: np.ndarray) -> np.ndarray:
    """Whether each row's entries (-1 = none, ignored) are all different."""
    s = np.sort(images, axis=1)
    return ~((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(axis=1)


def repeats_earlier(values: np.ndarray) -> np.ndarray:
    """Per entry, whether an earlier entry of its row has the same value."""
    order = np.argsort(values, axis=1, kind="stable")
    s = np.take_along_axis(values, order, axis=1)
    out = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(out, order[:, 1:], s[:, 1:] == s[:, :-1], axis=1)
    return out


def place_first(ok: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `wanted[r]` accepted entries of each row, in order: (row, column in the row, rank
    among them) of every entry taken."""
    rank = np.cumsum(ok, axis=1) - 1
    rows, cols = np.nonzero(ok & (rank < wanted[:, None]))
    return rows, cols, rank[rows, cols]


def stratified(rng: np.random.Generator, answers: np.ndarray, n: int) -> np.ndarray:
    """Positions of `n` of the drafts, taking answers in turn (smallest first) so the answer
    distribution is as flat as the draws allow, then in a random order. Within an answer the latest
    draft goes first; the answers are non-negative integers."""
    values, bucket, sizes = np.unique(answers, return_inverse=True, return_counts=True)
    order = np.argsort(bucket, kind="stable")
    place = np.empty(len(answers), dtype=np.int64)
    place[order] = np.arange(len(answers)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    turn = sizes[bucket] - 1 - place  # the round in which each draft is taken
    taken = np.lexsort((bucket, turn))[:n]
    if len(taken) < n:
        return taken  # the caller reports the shortfall
    return taken[rng.permutation(n)]
