"""A straightforward per-item rejection sampler: the baseline `generation.py` compares the project's
generator with.

What a first implementation would do: keep a Python dict of counts per image, and for every item
draw images uniformly from the whole index, pick the class, compute the answer and accept the item
only if it meets the cell's constraints; otherwise draw again, up to `MAX_TRIES` times per item. No
pools, no bitsets, no vectorisation. The same hard rules as the project's validity engine hold:
counted classes are leaves, no image holds a crowd box of the counted class or a box of one of its
ancestors, distractor images hold none of it, images are distinct, and Common's images share exactly
one category (a leaf).

Studies covered: counting/spread, counting/distractors, counting/n_images and common/n_images.
Answers are drawn first where the project balances them the same way (counting/distractors: the
total; counting/n_images: the total, uniform in 1..max_total), and matched by rejection.

The class is picked among the leaf classes present in the drawn images (`class_choice="present"`).
Picking it uniformly from all leaves first (`"uniform"`, the literal reading of "a random class")
almost never lands on a rare class that the uniformly drawn images hold, so it accepts far less
often; "present" is the stronger baseline, which makes the reported speed-up a conservative one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

MAX_TRIES = 200_000  # per item: an item that cannot be found in this many draws is given up
DEADLINE_EVERY = 256  # tries between clock checks


@dataclass
class NaiveIndex:
    image_ids: list[str]  # sorted, as the project's SamplingIndex orders them
    file_names: list[str]
    names: list[str]  # class index -> name
    leaf: list[bool]
    ancestors: list[frozenset[int]]  # class -> its ancestor classes
    counts: list[dict[int, int]]  # per image: class -> instance count
    crowd: list[frozenset[int]]  # per image: classes with a crowd/group box

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_parquet(cls, folder: str | Path, source: str, split: str) -> NaiveIndex:
        folder = Path(folder)
        cats = pq.read_table(folder / "categories.parquet").to_pylist()
        images = pq.read_table(folder / "images.parquet")
        images = images.filter(pc.and_(pc.equal(images["source"], source), pc.equal(images["split"], split)))
        images = images.sort_by("image_id")
        rows = pq.read_table(folder / "instance_counts.parquet", columns=["source", "split", "image_id", "category_id", "count", "crowd"])
        rows = rows.filter(pc.and_(pc.equal(rows["source"], source), pc.equal(rows["split"], split)))

        cats = [c for c in cats if c["source"] == source and c["is_thing"]]
        ids = sorted({c["category_id"] for c in cats})
        name_of = {c["category_id"]: c["name"] for c in cats}
        names = [name_of[i] for i in ids]
        index_of_name = {n: k for k, n in enumerate(names)}
        parents: list[set[int]] = [set() for _ in ids]
        has_children: set[str] = set()
        for c in cats:
            if c["parent"] and c["parent"] != c["name"]:
                has_children.add(c["parent"])
                if c["parent"] in index_of_name:
                    parents[index_of_name[c["name"]]].add(index_of_name[c["parent"]])
        ancestors = []
        for k in range(len(ids)):
            seen, stack = set(), list(parents[k])
            while stack:
                p = stack.pop()
                if p not in seen:
                    seen.add(p)
                    stack.extend(parents[p])
            ancestors.append(frozenset(seen))

        image_ids = images["image_id"].to_pylist()
        position = {i: k for k, i in enumerate(image_ids)}
        cat_position = {i: k for k, i in enumerate(ids)}
        counts: list[dict[int, int]] = [{} for _ in image_ids]
        crowd_sets: list[set[int] | None] = [None] * len(image_ids)
        for batch in rows.to_batches(max_chunksize=500_000):  # bounded: 9M rows as Python objects would not be
            for image, cat, count, crowd in zip(batch["image_id"].to_pylist(), batch["category_id"].to_pylist(),
                                                batch["count"].to_pylist(), batch["crowd"].to_pylist()):  # fmt: skip
                i, c = position[image], cat_position[cat]
                counts[i][c] = count
                if crowd:
                    if crowd_sets[i] is None:
                        crowd_sets[i] = set()
                    crowd_sets[i].add(c)
        empty: frozenset[int] = frozenset()
        crowd = [frozenset(s) if s else empty for s in crowd_sets]
        return cls(image_ids, images["file_name"].to_pylist(), names, [n not in has_children for n in names],
                   ancestors, counts, crowd)  # fmt: skip


@dataclass
class CellResult:
    task: str
    axis: str
    axis_value: str
    requested: int
    items: list[dict] = field(default_factory=list)
    tries: int = 0
    seconds: float = 0.0
    given_up: int = 0  # items that hit MAX_TRIES
    out_of_time: bool = False  # the cell's time budget ended before all items were drawn


class NaiveSampler:
    def __init__(self, index: NaiveIndex, seed: int = 0, class_choice: str = "present", image_root: str = ""):
        if class_choice not in ("present", "uniform"):
            raise ValueError(f"class_choice must be 'present' or 'uniform', got {class_choice!r}")
        self.ix = index
        self.rnd = random.Random(seed)
        self.class_choice = class_choice
        self.image_root = image_root.rstrip("/")
        self.leaves = [c for c in range(len(index.names)) if index.leaf[c]]
        self.is_leaf = index.leaf

    # -- one try each: an item dict, or None --------------------------------------------------

    def try_counting(self, n: int, target: list[int] | None, total: int | None) -> dict | None:
        """`target`: the sorted per-image counts required; else `total`: the required sum (>= 1)."""
        ix, rnd = self.ix, self.rnd
        images = rnd.sample(range(ix.n_images), n)
        if self.class_choice == "uniform":
            c = self.leaves[rnd.randrange(len(self.leaves))]
        else:
            present = [k for i in images for k in ix.counts[i] if self.is_leaf[k]]
            if not present:
                return None
            c = present[rnd.randrange(len(present))]  # a class weighted by how many drawn images hold it
        per_image = [ix.counts[i].get(c, 0) for i in images]
        if target is not None:
            if sorted(per_image) != target:
                return None
        elif sum(per_image) != total:
            return None
        ancestors = ix.ancestors[c]
        for i in images:
            if c in ix.crowd[i] or (ancestors and not ancestors.isdisjoint(ix.counts[i])):
                return None
        name = ix.names[c]
        answer = sum(per_image)
        return self._item(images, [name], str(answer), ["needle" if k else "distractor" for k in per_image],
                          f"How many {name}s are there in these images? Answer with a number.",
                          {"total": answer, "counts": {name: per_image}})  # fmt: skip

    def try_common(self, n: int) -> dict | None:
        ix, rnd = self.ix, self.rnd
        images = rnd.sample(range(ix.n_images), n)
        if self.class_choice == "uniform":
            a = self.leaves[rnd.randrange(len(self.leaves))]
            if any(a not in ix.counts[i] for i in images):
                return None
        common = set(ix.counts[images[0]])
        for i in images[1:]:
            common.intersection_update(ix.counts[i])
            if not common:
                return None
        if len(common) != 1:
            return None
        (c,) = common
        if not self.is_leaf[c]:
            return None
        name = ix.names[c]
        return self._item(images, [], name, ["needle"] * n,
                          "Which object category appears in every one of these images? Answer with the category name.",
                          {"category": name, "per_image": [sorted(ix.names[k] for k in ix.counts[i]) for i in images]})  # fmt: skip

    def _item(self, images, query, answer, roles, question, struct) -> dict:
        ix = self.ix
        return {"images": images, "image_ids": [ix.image_ids[i] for i in images],
                "image_paths": [f"{self.image_root}/{ix.file_names[i]}" for i in images], "query": query,
                "roles": roles, "question": question, "answer": answer, "answer_struct": struct}  # fmt: skip

    # -- cells --------------------------------------------------------------------------------

    def one_try(self, task: str, axis: str, values: dict, settings: dict):
        """A function drawing one candidate item of the cell (fresh answer targets per item)."""
        if task == "common" and axis == "n_images":
            n = values["n_images"]
            return lambda: (lambda: self.try_common(n))
        if task != "counting":
            raise ValueError(f"the naive sampler does not implement {task}/{axis}")
        if axis == "spread":
            target = sorted(int(x) for x in values["spread"].split("-"))
            return lambda: (lambda: self.try_counting(len(target), target, None))
        if axis == "distractors":
            def per_item():
                total = self.rnd.choice(settings["totals"])
                needles = [total] if values["placement"] == "concentrated" else [1] * total
                target = sorted(needles + [0] * values["n_distractors"])
                return lambda: self.try_counting(len(target), target, None)
            return per_item
        if axis == "n_images":
            n = values["n_images"]

            def per_item():
                total = self.rnd.randint(1, settings["max_total"])
                return lambda: self.try_counting(n, None, total)
            return per_item
        raise ValueError(f"the naive sampler does not implement {task}/{axis}")

    def run_cell(self, task: str, axis: str, axis_value: str, values: dict, settings: dict, n: int, budget_s: float) -> CellResult:
        out = CellResult(task, axis, axis_value, n)
        new_item = self.one_try(task, axis, values, settings)
        started = time.perf_counter()
        deadline = started + budget_s
        while len(out.items) + out.given_up < n and not out.out_of_time:
            draw = new_item()
            for t in range(1, MAX_TRIES + 1):
                item = draw()
                if item is not None:
                    out.items.append(item)
                    out.tries += t
                    break
                if t % DEADLINE_EVERY == 0 and time.perf_counter() > deadline:
                    out.tries += t
                    out.out_of_time = True
                    break
            else:
                out.tries += MAX_TRIES
                out.given_up += 1
        out.seconds = time.perf_counter() - started
        return out
