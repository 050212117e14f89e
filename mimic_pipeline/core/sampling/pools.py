"""The annotation index of one (source, split) in the shape samplers need: numpy arrays, no SQL.

Built once per generation from the index tables; all samplers draw from it. Sizes stay linear in
the number of (image, category) rows, so an OpenImages-scale index (1.7M images) fits in memory:

* `present`: an (images x words) uint64 bitset of the categories each image holds, for set tests
  on many candidate image sets at once (Common's "in every image", distractors' "none of these").
* per category: the images holding it, with the count and crowd flag (counting pools).
* the hierarchy: parents with at least two leaf children (Listing, Odd-One), and ancestors.

Only *leaf* thing categories are ever queried or answered: an OpenImages class with sub-classes
("Bird") would make "how many birds" depend on boxes labelled "Eagle". An image holding a crowd box
of a category, or a box of one of its ancestors, is *ambiguous* for that category and never serves
as a needle or distractor for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from . import draws

MAX_CHILDREN = 62  # leaf children per Listing / Odd-One parent (bits of an int64 mask)


class SamplingError(RuntimeError):
    """The index cannot supply what a study asks for (too few images of some kind)."""


@dataclass
class CountPools:
    """The images that can serve as needles of a class with exactly k instances (no crowd box of the
    class, no box of a class above it), for every (class, k), in one array ordered by class then k."""

    images: np.ndarray  # image indices
    start: np.ndarray  # (categories, most + 2): pool (c, k) is images[start[c, k]:start[c, k + 1]]

    def sizes(self, c, k) -> np.ndarray:
        return self.start[c, np.asarray(k) + 1] - self.start[c, k]

    @cached_property
    def max_count(self) -> np.ndarray:
        """Per class, the largest k with a non-empty pool (0 if none)."""
        nonempty = np.diff(self.start, axis=1) > 0
        return np.where(nonempty.any(axis=1), nonempty.shape[1] - 1 - np.argmax(nonempty[:, ::-1], axis=1), 0)


@dataclass
class SamplingIndex:
    source: str
    split: str
    image_ids: pa.StringArray  # one per image index, sorted
    file_names: pa.StringArray
    names: list[str]  # category index -> name (thing categories present in this split), sorted by name
    category_ids: list[str]
    ancestor_names: list[set[str]]  # category -> every name above it in the hierarchy (box-less parents too)
    children_of: dict[str, list[int]]  # parent name -> leaf children (category indices), >= 2 of them
    present: np.ndarray  # (n_images, words) uint64
    # per category (CSR, sorted by category then image): the images holding it, with count and crowd flag
    cat_ptr: np.ndarray
    cat_img: np.ndarray
    cat_cnt: np.ndarray
    cat_crowd: np.ndarray
    leaf: np.ndarray  # bool per category
    # the same rows per image (CSR, sorted by image then category): cheap exact look-ups of one image,
    # used by the validity engine so that it reads the index another way than the samplers' bitsets do
    row_ptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    row_cat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_cnt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    row_crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    extra: dict = field(default_factory=dict)

    def image_id(self, image: int) -> str:
        return self.image_ids[image].as_py()

    def file_name(self, image: int) -> str:
        return self.file_names[image].as_py()

    def images_of(self, c: int) -> np.ndarray:
        """The images holding category `c` (sorted)."""
        return self.cat_img[self.cat_ptr[c] : self.cat_ptr[c + 1]]

    def names_in(self, images: np.ndarray) -> list[list[str]]:
        """Per image, the names of the categories it holds, sorted (category order is name order)."""
        _, rows = draws.expand_ranges(self.row_ptr[images], self.row_ptr[images + 1])
        names = self.name_array[self.row_cat[rows]].tolist()
        ends = np.cumsum(self.row_ptr[images + 1] - self.row_ptr[images]).tolist()
        return [names[a:b] for a, b in zip([0, *ends[:-1]], ends)]

    @cached_property
    def name_array(self) -> np.ndarray:
        return np.array(self.names, dtype=object)

    def counts_in(self, images: np.ndarray, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(count, crowd) of category cats[i] in image images[i] (0, False where it has none), for any
        shape of (broadcast) arrays: a binary search in each image's rows, every pair at once."""
        images, cats = np.broadcast_arrays(np.asarray(images, dtype=np.int64), np.asarray(cats, dtype=np.int64))
        lo, end = self.row_ptr[images], self.row_ptr[images + 1]
        hi = end.copy()
        last = max(len(self.row_cat) - 1, 0)
        while (searching := lo < hi).any():
            mid = (lo + hi) // 2
            below = self.row_cat[np.minimum(mid, last)] < cats
            lo = np.where(searching & below, mid + 1, lo)
            hi = np.where(searching & ~below, mid, hi)
        at = np.minimum(lo, last)
        found = (lo < end) & (self.row_cat[at] == cats)
        return np.where(found, self.row_cnt[at], 0), found & self.row_crowd[at]

    @cached_property
    def name_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def ambiguity_set(self, parent: str) -> set[int]:
        """The parent class itself and every category below it that is not one of its leaf children
        (a "Fruit" box, or a "Pear" box two levels down, is food but none of the kinds a Listing of
        "Food" asks for): an image holding one is ambiguous for the parent."""
        key = ("ambiguity_set", parent)
        if key not in self.extra:
            children = set(self.children_of.get(parent, ()))
            out = {c for c, above in enumerate(self.ancestor_names) if parent in above and c not in children}
            if parent in self.name_index:
                out.add(self.name_index[parent])
            self.extra[key] = out
        return self.extra[key]

    @cached_property
    def ancestor_matrix(self) -> np.ndarray:
        """(categories + 1, categories) bool: [c, a] is whether a lies above c (see `ancestors`); the
        last row stands for "no class" (padding of a query) and is all False."""
        out = np.zeros((len(self.names) + 1, len(self.names)), dtype=bool)
        for c, above in enumerate(self.ancestors):
            out[c, list(above)] = True
        return out

    @cached_property
    def parent_names(self) -> list[str]:
        """The Listing / Odd-One parents, sorted; a parent's position is its row in `kind_tables`."""
        return sorted(self.children_of)

    @cached_property
    def kind_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(kind_bit, ambiguous), each (parents + 1, categories): the bit of category c among parent p's
        leaf children (-1 if none of them), and whether c makes an image ambiguous for p
        (`ambiguity_set`). The last row stands for an unknown parent: no kinds, nothing ambiguous."""
        n_parents, n_cats = len(self.parent_names), len(self.names)
        kind_bit = np.full((n_parents + 1, n_cats), -1, dtype=np.int8)
        ambiguous = np.zeros((n_parents + 1, n_cats), dtype=bool)
        for p, parent in enumerate(self.parent_names):
            kind_bit[p, self.children_of[parent]] = np.arange(len(self.children_of[parent]))
            ambiguous[p, list(self.ambiguity_set(parent))] = True
        return kind_bit, ambiguous

    def kind_names(self, parent: int, mask: int) -> list[str]:
        """The sorted names of the kinds of parent (position in `parent_names`) whose bits `mask` sets
        (cached: few distinct masks, asked for on every item; callers must not change the list)."""
        key = ("kind_names", parent, mask)
        if key not in self.extra:
            kinds = self.children_of[self.parent_names[parent]]
            self.extra[key] = sorted(self.names[c] for j, c in enumerate(kinds) if mask >> j & 1)
        return self.extra[key]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def words(self) -> int:
        return self.present.shape[1]

    def bits(self, categories) -> np.ndarray:
        """The bitset (words,) of a set of category indices."""
        out = np.zeros(self.words, dtype=np.uint64)
        for c in categories:
            out[c // 64] |= np.uint64(1) << np.uint64(c % 64)
        return out

    @cached_property
    def ancestors(self) -> list[set[int]]:
        """Per category, the categories above it that this split has boxes of."""
        return [{self.name_index[a] for a in above if a in self.name_index} for above in self.ancestor_names]

    @cached_property
    def class_bits(self) -> np.ndarray:
        """(categories, words): each category's own bit."""
        return np.stack([self.bits([c]) for c in range(len(self.names))]) if self.names else np.zeros((0, self.words), np.uint64)

    @cached_property
    def counted_bits(self) -> np.ndarray:
        """(categories, words): a category and every category above it; an image holding none of them
        can stand beside the category's needles as a distractor."""
        return np.stack([self.bits({c} | self.ancestors[c]) for c in range(len(self.names))]) if self.names else self.class_bits

    def has_any(self, images: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Whether each image (any shape of indices) holds any category of `bits`; reads only the
        words that have bits set (most queries name a few categories)."""
        images = np.asarray(images)
        out = np.zeros(images.shape, dtype=bool)
        for w in np.flatnonzero(bits).tolist():
            out |= (self.present[images, w] & bits[w]) != 0
        return out

    def has_any_of_row(self, images: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Whether images[r, j] holds any category of bits[r] (one bitset per row)."""
        return (self.present[images] & bits[:, None, :]).any(axis=-1)

    @cached_property
    def count_pools(self) -> CountPools:
        """Built once per index, before generation forks its workers (they share it)."""
        keep = ~self.cat_crowd
        for c, above in enumerate(self.ancestors):
            if above:
                a, b = self.cat_ptr[c], self.cat_ptr[c + 1]
                keep[a:b] &= ~self.has_any(self.cat_img[a:b], self.bits(above))
        cats = np.repeat(np.arange(len(self.names)), np.diff(self.cat_ptr))[keep]
        counts = self.cat_cnt[keep]
        most = int(counts.max()) if len(counts) else 0
        # rows are in category order already: a stable sort by (category, count) keeps images in order
        # (keys in the smallest integer type: numpy sorts 16-bit keys by radix, in linear time)
        key = cats * (most + 1) + counts
        order = np.argsort(key.astype(np.min_scalar_type(len(self.names) * (most + 1))), kind="stable")
        key = key[order]
        start = np.searchsorted(key, np.arange(len(self.names))[:, None] * (most + 1) + np.arange(most + 2))
        return CountPools(self.cat_img[keep][order], start)

    def draw_free(self, rng: np.random.Generator, avoid: np.ndarray, wanted: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """Per row, `wanted[r]` distinct random images holding no category of the bitset avoid[r] and
        not in taken[r]; (rows, max wanted), -1 after a row's images.

        Rejection sampling in a few vectorised rounds, candidates taken in order (cheap when such
        images are common); rows still short then test every image once and draw from those that
        qualify, so it never loops and fails only when there are too few.
        """
        wanted = np.asarray(wanted, dtype=np.int64)
        out = np.full((len(wanted), int(wanted.max()) if len(wanted) else 0), -1, dtype=np.int64)
        got = np.zeros(len(wanted), dtype=np.int64)
        for _ in range(3):
            short = np.flatnonzero(got < wanted)
            if not len(short):
                return out
            need = wanted[short] - got[short]
            cand = rng.integers(0, self.n_images, size=(len(short), max(4 * int(need.max()), 16)))
            held = np.concatenate([taken[short], out[short]], axis=1)
            ok = ~self.has_any_of_row(cand, avoid[short]) & ~(cand[:, :, None] == held[:, None, :]).any(axis=2)
            ok &= ~draws.repeats_earlier(cand)
            rows, cols, rank = draws.place_first(ok, need)
            out[short[rows], got[short][rows] + rank] = cand[rows, cols]
            got[short] += np.minimum(ok.sum(axis=1), need)
        for r in np.flatnonzero(got < wanted).tolist():
            free = np.flatnonzero(~self.has_any(np.arange(self.n_images), avoid[r]))
            free = free[~np.isin(free, np.concatenate([taken[r], out[r]]))]
            if len(free) < wanted[r] - got[r]:
                raise SamplingError(f"{self.source}/{self.split}: fewer than {wanted[r]} images free of the queried categories "
                                    f"(and of what is ambiguous for them) exist; the index is too small")  # fmt: skip
            out[r, got[r] : wanted[r]] = rng.choice(free, size=wanted[r] - got[r], replace=False)
        return out


def _above(name: str, parents_of: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(parents_of.get(name, ()))
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(parents_of.get(p, ()))
    return seen


def build_sampling_index(categories: pa.Table, images: pa.Table, counts: pa.Table, source: str, split: str) -> SamplingIndex:
    """Arrays for sampling from the index tables (as loaded into the catalogue) of one source and split."""
    with duckdb.connect() as con:
        for name, table in (("categories", categories), ("images", images), ("instance_counts", counts)):
            con.register(name, table)
        return _build(con, source, split)


def sampling_index_from_parquet(folder, source: str, split: str) -> SamplingIndex:
    """The sampling index of one split, from the index Parquet files the annotation stage writes.

    DuckDB reads the files and turns ids into integer positions, so only compact numeric arrays reach
    Python: an index of 1.7M images and 9M (image, category) rows builds in well under 1 GB.
    """
    folder = Path(folder)
    missing = [t for t in ("categories", "images", "instance_counts") if not (folder / f"{t}.parquet").exists()]
    if missing:
        raise SamplingError(f"no annotation index for source {source!r} in {folder} ({', '.join(missing)} missing): "
                            f"materialize annotation_index[{source}] first")  # fmt: skip
    with duckdb.connect() as con:
        for name in ("categories", "images", "instance_counts"):
            quoted = str((folder / f"{name}.parquet").resolve()).replace("'", "''")
            con.execute(f"create view {name} as select * from read_parquet('{quoted}')")
        return _build(con, source, split)


def _build(con: duckdb.DuckDBPyConnection, source: str, split: str) -> SamplingIndex:
    """The index from relations `categories`, `images` and `instance_counts` on `con`."""
    cats = con.execute("select category_id, name, parent from categories where source = ? and is_thing",
                       [source]).fetchall()  # fmt: skip
    used_ids = {r[0] for r in con.execute(
        "select distinct category_id from instance_counts where source = ? and split = ?", [source, split]).fetchall()}  # fmt: skip
    by_id = {cid: name for cid, name, _ in cats if cid in used_ids}
    # the hierarchy by name, from every category of the source: OpenImages parents may have no boxes
    all_children: dict[str, set[str]] = {}
    parents_of: dict[str, set[str]] = {}
    for _, name, parent in cats:
        if parent and parent != name:
            all_children.setdefault(parent, set()).add(name)
            parents_of.setdefault(name, set()).add(parent)
    ordered = sorted(by_id, key=lambda cid: (by_id[cid], cid))
    names = [by_id[cid] for cid in ordered]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SamplingError(f"{source}/{split}: category names used by two ids: {dupes[:5]}; questions need unique names")
    name_index = {n: i for i, n in enumerate(names)}
    leaf = np.array([n not in all_children for n in names], dtype=bool)
    ancestor_names = [_above(n, parents_of) for n in names]
    children_of: dict[str, list[int]] = {}
    for p, kids in sorted(all_children.items()):
        leaf_kids = sorted(name_index[k] for k in kids if k in name_index and leaf[name_index[k]])
        # a family's children are bits of an int64 mask; real hierarchies stay far below (OpenImages: 28)
        if 2 <= len(leaf_kids) <= MAX_CHILDREN:
            children_of[p] = leaf_kids

    con.execute("create temp table img as select image_id, file_name, (row_number() over (order by image_id) - 1)::INTEGER as pos "
                "from images where source = ? and split = ?", [source, split])  # fmt: skip
    images = con.sql("select image_id, file_name from img order by pos").to_arrow_table()
    if images.num_rows == 0:
        raise SamplingError(f"no images for source {source!r}, split {split!r} in the index")
    con.register("cat_order", pa.table({"category_id": ordered, "cat": np.arange(len(ordered), dtype=np.int32)}))
    rows = con.execute(
        """select i.pos as img, k.cat, c.count::INTEGER as count, c.crowd,
                  i.pos is null or k.cat is null as unknown
           from instance_counts c
           left join img i using (image_id)
           left join cat_order k using (category_id)
           where c.source = ? and c.split = ?""",
        [source, split],
    ).fetchnumpy()
    if rows["unknown"].any():
        raise SamplingError(f"{source}/{split}: instance counts point at unknown images or non-thing categories; "
                            "rebuild the annotation index (its checks catch this)")  # fmt: skip
    row_img = np.asarray(rows["img"], dtype=np.int32)
    row_cat = np.asarray(rows["cat"], dtype=np.int32)
    row_cnt = np.asarray(rows["count"], dtype=np.int32)
    row_crowd = np.asarray(rows["crowd"], dtype=bool)
    del rows
    n_images = images.num_rows
    words = max(1, (len(names) + 63) // 64)
    present = np.zeros((n_images, words), dtype=np.uint64)
    np.bitwise_or.at(present, (row_img, row_cat // 64), np.left_shift(np.uint64(1), (row_cat % 64).astype(np.uint64)))
    # per category (CSR): the counting pools and families are cut from these
    order = np.lexsort((row_img, row_cat))
    by_cat = (row_img[order], row_cnt[order], row_crowd[order])
    cat_ptr = np.searchsorted(row_cat[order], np.arange(len(names) + 1)).astype(np.int64)
    del order
    # per image (CSR): the validity engine's look-ups
    order = np.lexsort((row_cat, row_img))
    row_ptr = np.searchsorted(row_img[order], np.arange(n_images + 1)).astype(np.int64)
    csr = (row_cat[order], row_cnt[order], row_crowd[order])
    del order, row_img, row_cat, row_cnt, row_crowd
    # ids and file names stay Arrow strings (35 MB at 1.7M images; a numpy array of str would be ~250 MB)
    image_ids = images.column("image_id").combine_chunks()
    file_names = images.column("file_name").combine_chunks()
    return SamplingIndex(source, split, image_ids, file_names, names, ordered, ancestor_names, children_of,
                         present, cat_ptr, *by_cat, leaf, row_ptr, *csr)  # fmt: skip


def image_positions(index: SamplingIndex, image_ids: list[str]) -> list[int]:
    """Image indices of ids, by binary search over the sorted ids (no 1.7M-entry lookup table to build);
    an id not in the index is an error."""
    ids = index.image_ids
    out = []
    for image_id in image_ids:
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[mid].as_py() < image_id:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(ids) or ids[lo].as_py() != image_id:
            raise SamplingError(f"image id {image_id!r} is not in the {index.source}/{index.split} index")
        out.append(lo)
    return out
