"""The validity engine: re-derives every item's answer from the index and checks the hard rules.

Independent of how the samplers chose the images: it looks only at the items (their images, roles,
query and stored answer) and the index's per-image rows (category, count, crowd), read from the
per-image CSR, not from the bitsets the samplers use. It works on a whole cell at once: the rows of
every image of every item are gathered in one go and each rule is an array operation over them;
messages are written only for the items that break a rule. Generation runs it on every item and
refuses to write an invalid one; the Dagster check re-derives the answers once more in SQL
(`sql/item_checks.sql`) from the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import draws
from .items import ItemBatch, ItemDraft
from .pools import SamplingIndex


class _Rows:
    """The index rows of every image of a batch: one per (item, image slot, category the image holds)."""

    def __init__(self, index: SamplingIndex, images: np.ndarray):
        shown = images >= 0
        self.n_items = len(images)
        self.n_images = shown.sum(axis=1)
        self.slot_item, _ = np.nonzero(shown)  # slots: the shown images, item by item
        self.slot_image = images[shown]
        self.slot, at = draws.expand_ranges(index.row_ptr[self.slot_image], index.row_ptr[self.slot_image + 1])
        self.item = self.slot_item[self.slot]
        self.cat = index.row_cat[at].astype(np.int64)
        self.count = index.row_cnt[at]
        self.crowd = index.row_crowd[at]
        # a slot repeating an image shown earlier in its item
        order = np.lexsort((np.arange(len(self.slot_image)), self.slot_image, self.slot_item))
        again = (self.slot_item[order][1:] == self.slot_item[order][:-1]) & (self.slot_image[order][1:] == self.slot_image[order][:-1])
        self.repeat = np.zeros(len(self.slot_image), dtype=bool)
        self.repeat[order[1:][again]] = True

    def per_slot(self, flags: np.ndarray) -> np.ndarray:
        """Whether any row of each slot has the flag."""
        return np.bincount(self.slot[flags], minlength=len(self.slot_image)) > 0

    def per_item_sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.item, weights=values, minlength=self.n_items).astype(np.int64)


def _query_classes(index: SamplingIndex, query: list[list[str]]) -> np.ndarray:
    """(items, most classes) category indices of the counted classes; padding and unknown names are
    len(names), the row of `ancestor_matrix` that stands for no class."""
    none = len(index.names)
    width = max((len(q) for q in query), default=0)
    out = np.full((len(query), max(width, 1)), none, dtype=np.int64)
    for k, names in enumerate(query):
        out[k, : len(names)] = [index.name_index.get(n, none) for n in names]
    return out


def _parents(index: SamplingIndex, query: list[list[str]]) -> np.ndarray:
    """Per item, the position of its parent in `parent_names` (len(parent_names) if it is none)."""
    at = {p: i for i, p in enumerate(index.parent_names)}
    return np.array([at.get(q[0], len(at)) if q else len(at) for q in query], dtype=np.int64)


def _counting(index: SamplingIndex, rows: _Rows, query: list[list[str]]):
    """(totals, per-slot crowd / holds-a-queried-class / ancestor-box flags, classes)."""
    classes = _query_classes(index, query)
    queried = (rows.cat[:, None] == classes[rows.item]).any(axis=1)
    totals = rows.per_item_sum(np.where(queried, rows.count, 0))
    crowd = rows.per_slot(queried & rows.crowd)
    holds = rows.per_slot(queried & (rows.count > 0))
    above = index.ancestor_matrix[classes[rows.item], rows.cat[:, None]].any(axis=1)
    return totals, crowd, holds, rows.per_slot(above), classes


def _kinds(index: SamplingIndex, rows: _Rows, parents: np.ndarray):
    """(per-slot masks of the parent's kinds, per-slot ambiguity flags, (items, 64) in how many of
    its images each kind of the item's parent appears)."""
    kind_bit, ambiguous = index.kind_tables
    row_parent = parents[rows.item]
    bit = kind_bit[row_parent, rows.cat].astype(np.int64)
    kind = bit >= 0  # an image's rows name each category once: one row per (image, kind) held
    masks = np.zeros(len(rows.slot_image), dtype=np.int64)
    np.bitwise_or.at(masks, rows.slot[kind], np.left_shift(1, bit[kind]))
    presence = np.bincount(rows.item[kind] * 64 + bit[kind], minlength=rows.n_items * 64).reshape(rows.n_items, 64)
    return masks, rows.per_slot(ambiguous[row_parent, rows.cat]), presence


def _names_of(index: SamplingIndex, parents: np.ndarray, masks: np.ndarray) -> list[str]:
    none = len(index.parent_names)
    return [", ".join(index.kind_names(p, m)) if p != none else "" for p, m in zip(parents.tolist(), masks.tolist())]


def _in_every_image(index: SamplingIndex, rows: _Rows) -> list[str]:
    """Per item, the categories every one of its (distinct) images holds, sorted and joined."""
    first = ~rows.repeat[rows.slot]
    keys, counts = np.unique(rows.item[first] * len(index.names) + rows.cat[first], return_counts=True)
    distinct = np.bincount(rows.slot_item[~rows.repeat], minlength=rows.n_items)
    item, cat = np.divmod(keys, len(index.names))
    common: list[list[str]] = [[] for _ in range(rows.n_items)]
    for k, c in zip(item[counts == distinct[item]].tolist(), cat[counts == distinct[item]].tolist()):
        common[k].append(index.names[c])
    return [", ".join(sorted(names)) for names in common]


def _derive(index: SamplingIndex, task: str, rows: _Rows, query: list[list[str]]) -> list[str]:
    if task == "counting":
        return [str(t) for t in _counting(index, rows, query)[0].tolist()]
    if task == "common":
        return _in_every_image(index, rows)
    if task in ("listing", "odd_one"):
        parents = _parents(index, query)
        masks, _, presence = _kinds(index, rows, parents)
        if task == "listing":
            union = np.zeros(rows.n_items, dtype=np.int64)
            np.bitwise_or.at(union, rows.slot_item, masks)
            return _names_of(index, parents, union)
        minority = (presence > 0) & (2 * presence < rows.n_images[:, None])
        return _names_of(index, parents, (minority.astype(np.int64) << np.arange(64)).sum(axis=1))
    raise ValueError(f"unknown task {task!r}")


def derive_answers(index: SamplingIndex, task: str, images: np.ndarray, query: list[list[str]]) -> list[str]:
    """The canonical answers of items (images: (items, width), -1 after each item's last image), from
    the index alone (the oracle answers with these)."""
    return _derive(index, task, _Rows(index, images), query)


def derive_answer(index: SamplingIndex, task: str, images: list[int], query: list[str]) -> str:
    return derive_answers(index, task, np.array([images], dtype=np.int64).reshape(1, -1), [query])[0]


class _Findings:
    """Problems as they are found, kept in the order of the rules (then of the images) per item."""

    def __init__(self, index: SamplingIndex, rows: _Rows):
        self.index, self.rows = index, rows
        self.found: list[tuple[int, int, int, str]] = []  # (item, rule, slot, text)

    def items(self, rule: int, flagged: np.ndarray, text: Callable[[int], str]) -> None:
        self.found += [(k, rule, -1, text(k)) for k in np.flatnonzero(flagged).tolist()]

    def slots(self, rule: int, flagged: np.ndarray, text: Callable[[str, int], str]) -> None:
        """`text(image id, item)` for every slot flagged."""
        for s in np.flatnonzero(flagged).tolist():
            k = int(self.rows.slot_item[s])
            self.found.append((k, rule, s, text(self.index.image_id(int(self.rows.slot_image[s])), k)))

    def by_item(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for k, _, _, text in sorted(self.found, key=lambda f: f[:3]):
            out.setdefault(k, []).append(text)
        return out


def batch_problems(index: SamplingIndex, task: str, batch: ItemBatch) -> dict[int, list[str]]:
    """Every rule each item of a batch breaks: {item position: problems}, for the items with any."""
    rows = _Rows(index, batch.images)
    found = _Findings(index, rows)
    distractor = batch.distractor[batch.images >= 0]
    found.items(0, np.bincount(rows.slot_item[rows.repeat], minlength=len(batch)) > 0, lambda k: "an image appears twice")
    if task == "counting":
        totals, crowd, holds, above, classes = _counting(index, rows, batch.query)
        none = len(index.names)
        found.items(1, ((classes != none) & ~np.append(index.leaf, False)[classes]).any(axis=1),
                    lambda k: "a queried class has sub-classes")  # fmt: skip
        found.slots(2, crowd, lambda image, k: f"image {image} has a crowd box of a queried class")
        found.slots(2, ~crowd & distractor & holds, lambda image, k: f"distractor {image} holds a queried class")
        found.slots(2, above, lambda image, k: f"image {image} has a box of a parent of a queried class")
        derived = [str(t) for t in totals.tolist()]
    else:
        derived = _derive(index, task, rows, batch.query)
    wrong = np.array([d != a for d, a in zip(derived, batch.answers)], dtype=bool)
    found.items(3, wrong, lambda k: f"answer {batch.answers[k]!r} but the index gives {derived[k]!r}")

    if task in ("listing", "odd_one"):
        parents = _parents(index, batch.query)
        unknown = len(index.parent_names)
        found.items(4, parents == unknown, lambda k: f"{batch.query[k][:1]} is not a parent with two or more kinds here")
        masks, ambiguous, presence = _kinds(index, rows, parents)
        found.slots(5, ambiguous, lambda image, k: f"image {image} holds the parent class or a category below it that is none of its kinds")
        found.slots(5, distractor & (masks != 0), lambda image, k: f"distractor {image} holds a child of {batch.query[k][0]!r}")
        if task == "odd_one":
            found.items(6, rows.n_images < 3, lambda k: "Odd-One needs at least 3 images")
            n = rows.n_images[:, None]
            minority = (presence > 0) & (2 * presence < n)
            answer_bit = _answer_bits(index, parents, batch.answers)
            others = minority & (np.arange(64) != answer_bit[:, None])
            split = ((presence > 0) & (2 * presence == n)).any(axis=1) | others.any(axis=1)
            found.items(7, split, lambda k: f"presence over {rows.n_images[k]} images is {_presence_text(index, parents[k], presence[k])}: "
                                            "not exactly one minority child")  # fmt: skip
    elif task == "common":
        found.items(8, np.array([", " in d for d in derived], dtype=bool),
                    lambda k: f"several categories are in every image: {derived[k]}")  # fmt: skip
    return found.by_item()


def _answer_bits(index: SamplingIndex, parents: np.ndarray, answers: list[str]) -> np.ndarray:
    """Per item, the bit of its answer among its parent's kinds (-1 if the answer is none of them)."""
    kind_bit, _ = index.kind_tables
    none = len(index.names)
    cats = np.array([index.name_index.get(a, none) for a in answers], dtype=np.int64)
    bits = np.append(kind_bit, np.full((len(kind_bit), 1), -1, dtype=np.int8), axis=1)[parents, cats]
    return bits.astype(np.int64)


def _presence_text(index: SamplingIndex, parent: int, presence: np.ndarray) -> str:
    kinds = index.children_of[index.parent_names[parent]]
    return str({index.names[kinds[j]]: int(presence[j]) for j in np.flatnonzero(presence)})


def item_problems(index: SamplingIndex, task: str, item: ItemDraft) -> list[str]:
    """Every rule one item breaks (empty when valid)."""
    problems = [] if len(item.roles) == len(item.images) else ["roles and images differ in length"]
    return problems + batch_problems(index, task, ItemBatch.from_drafts([item])).get(0, [])
