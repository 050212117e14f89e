"""The benchmark samplers on hand-built indexes, where every right answer is known by construction.

Each world below is a plain dict (image id -> {category: instance count}) plus its hierarchy edges;
the tests turn it into the index tables, generate items through the public functions and check
every item against answers computed here from the dict alone (never through the package).
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.core.annotations.index import AnnotationIndex
from mimic_pipeline.core.baselines import baseline_answers
from mimic_pipeline.core.evaluation import metric_rows, score_predictions
from mimic_pipeline.core.sampling import draws
from mimic_pipeline.core.sampling.balance import answer_balance
from mimic_pipeline.core.sampling.config import DEFAULT_STUDIES, TASKS, BenchmarkConfig, items_per_task, partitions
from mimic_pipeline.core.sampling.generate import generate_task
from mimic_pipeline.core.sampling.items import ItemBatch, ItemDraft, write_items
from mimic_pipeline.core.sampling.listing import ListingSampler
from mimic_pipeline.core.sampling.pools import SamplingError, build_sampling_index, image_positions
from mimic_pipeline.core.sampling.validity import batch_problems, derive_answer, item_problems

IMAGE_ROOT = Path("/images/tiny")

# ---- hand-built worlds -------------------------------------------------------------------------------


@dataclass
class World:
    """An annotation index as plain Python data, and the ground truth computed from it."""

    source: str
    split: str
    contents: dict[str, dict[str, int]]  # image id -> {category name: instance count}
    edges: list[tuple[str, str | None]]  # (category, parent) rows; OpenImages-like: one row per edge
    crowd: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (image id, category) crowd boxes

    # -- as the index tables the annotation stage writes
    def tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        names = sorted({c for c, _ in self.edges})
        cid = {n: f"c{k:02d}" for k, n in enumerate(names)}
        categories = pa.table({
            "source": [self.source] * len(self.edges), "category_id": [cid[c] for c, _ in self.edges],
            "name": [c for c, _ in self.edges], "parent": [p for _, p in self.edges], "is_thing": [True] * len(self.edges),
        })  # fmt: skip
        ids = sorted(self.contents)
        images = pa.table({
            "source": [self.source] * len(ids), "split": [self.split] * len(ids), "image_id": ids,
            "file_name": [f"{i}.jpg" for i in ids], "width": pa.array([640] * len(ids), pa.int32()),
            "height": pa.array([480] * len(ids), pa.int32()),
        })  # fmt: skip
        rows = [(i, n, k) for i in ids for n, k in sorted(self.contents[i].items())]
        counts = pa.table({
            "source": [self.source] * len(rows), "split": [self.split] * len(rows), "image_id": [i for i, _, _ in rows],
            "category_id": [cid[n] for _, n, _ in rows], "count": pa.array([k for _, _, k in rows], pa.int32()),
            "crowd": [(i, n) in self.crowd for i, n, _ in rows],
        })  # fmt: skip
        return categories, images, counts

    def annotation_index(self) -> AnnotationIndex:
        return AnnotationIndex(self.source, *self.tables())

    def sampling_index(self):
        return build_sampling_index(*self.tables(), self.source, self.split)

    # -- the hierarchy
    def parents(self, name: str) -> set[str]:
        return {p for c, p in self.edges if c == name and p and p != c}

    def children(self, parent: str) -> set[str]:
        return {c for c, p in self.edges if p == parent and c != parent}

    def is_leaf(self, name: str) -> bool:
        return not self.children(name)

    def ancestors(self, name: str) -> set[str]:
        out, todo = set(), list(self.parents(name))
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo += self.parents(p)
        return out

    # -- ground truth of one item
    def count(self, image: str, name: str) -> int:
        return self.contents[image].get(name, 0)

    def total(self, images: list[str], names: list[str]) -> int:
        return sum(self.count(i, n) for i in images for n in names)

    def leaf_children_in(self, image: str, parent: str) -> set[str]:
        return {n for n in self.contents[image] if n in self.children(parent) and self.is_leaf(n)}

    def listed(self, images: list[str], parent: str) -> list[str]:
        return sorted(set().union(*(self.leaf_children_in(i, parent) for i in images)))

    def in_every_image(self, images: list[str]) -> list[str]:
        return sorted(set.intersection(*(set(self.contents[i]) for i in images)))

    def presence(self, images: list[str], parent: str) -> dict[str, int]:
        """Images holding each leaf child of `parent` (children absent everywhere left out)."""
        return dict(Counter(n for i in images for n in self.leaf_children_in(i, parent)))

    def answer(self, task: str, images: list[str], query: list[str]) -> str:
        """The canonical answer, from the dict alone."""
        if task == "counting":
            return str(self.total(images, query))
        if task == "listing":
            return ", ".join(self.listed(images, query[0]))
        if task == "common":
            return ", ".join(self.in_every_image(images))
        presence = self.presence(images, query[0])
        return ", ".join(sorted(n for n, c in presence.items() if c < len(images) / 2))


FRUIT = ["apple", "pear", "plum", "grape"]
TOOLS = ["hammer", "saw"]
COUNT_CYCLE = [1, 2, 1, 3, 1, 4, 2, 1]  # instance counts taken in turn: every class gets images of 1, 2, 3 and 4
CROWD_IMAGE = "img080"


def fruit_and_tools() -> World:
    """81 COCO-like images: fruit (4 children) in img000-063, tools (2 children) in img024-079, person in every
    fifth image, and img080 with a crowd box of 4 apples (plus 2 ordinary pears)."""
    contents: dict[str, dict[str, int]] = {}
    for i in range(80):
        image: dict[str, int] = {}
        if i < 64:
            image[FRUIT[i % 4]] = COUNT_CYCLE[(i // 4) % 8]
            if i % 8 == 1:
                image[FRUIT[(i + 2) % 4]] = 1  # a second fruit: pear + grape
        if i >= 24:
            image[TOOLS[i % 2]] = COUNT_CYCLE[(i // 2) % 8]
            if i % 6 == 0:
                image[TOOLS[(i + 1) % 2]] = 1
        if i % 5 == 0:
            image["person"] = 1 + i % 2
        contents[f"img{i:03d}"] = image
    contents[CROWD_IMAGE] = {"apple": 4, "pear": 2}
    # COCO lists person as its own supercategory: a parent with one child, never a Listing parent
    edges = [(f, "fruit") for f in FRUIT] + [(t, "tool") for t in TOOLS] + [("person", "person")]
    return World("tiny", "val", contents, edges, frozenset({(CROWD_IMAGE, "apple")}))


OI_FRUIT = ["Apple", "Pear", "Plum", "Tomato"]


def openimages_like() -> World:
    """104 images over an OpenImages-like hierarchy: Food (no boxes) -> Fruit, Vegetable, Bread, Cake;
    Fruit (with boxes of its own in every fifth image from i002) -> Apple, Pear, Plum, Tomato;
    Vegetable (no boxes) -> Carrot, Tomato. Tomato has two parents, so two category rows.
    Images i072-i087 hold only furniture (Chair, Table): the food-free material distractors need;
    i088-i103 only Bread and/or Cake, Food's own kinds, so Food has unambiguous Listing/Odd-One material."""
    contents: dict[str, dict[str, int]] = {}
    for i in range(72, 88):
        contents[f"i{i:03d}"] = {["Chair", "Table"][i % 2]: 1 + i % 3}
    for i in range(88, 104):
        contents[f"i{i:03d}"] = [{"Bread": 1}, {"Cake": 2}, {"Bread": 1, "Cake": 1}][i % 3]
    for i in range(72):
        image: dict[str, int] = {}
        if i < 64:
            image[OI_FRUIT[i % 4]] = COUNT_CYCLE[(i // 4) % 8]
            if i % 8 == 1:
                image["Tomato"] = 1
            if i % 5 == 2:
                image["Fruit"] = 1  # a box labelled only "Fruit": could be any fruit
        if i >= 24:
            image[["Bread", "Cake", "Carrot"][i % 3]] = COUNT_CYCLE[(i // 3) % 8]
        contents[f"i{i:03d}"] = image
    edges = [("Food", None), ("Fruit", "Food"), ("Vegetable", "Food"), ("Bread", "Food"), ("Cake", "Food"),
             ("Apple", "Fruit"), ("Pear", "Fruit"), ("Plum", "Fruit"), ("Tomato", "Fruit"), ("Tomato", "Vegetable"),
             ("Carrot", "Vegetable"), ("Furniture", None), ("Chair", "Furniture"), ("Table", "Furniture")]  # fmt: skip
    return World("oi", "train", dict(sorted(contents.items())), edges)


@pytest.fixture(scope="module")
def world() -> World:
    return fruit_and_tools()


@pytest.fixture(scope="module")
def index(world):
    return world.sampling_index()


CFG = BenchmarkConfig(seed=0, items_per_cell=6)


@pytest.fixture(scope="module")
def items(index) -> dict[str, pa.Table]:
    """Every task of the default benchmark (all studies), 6 items per cell."""
    return {task: generate_task(index, task, CFG, "eval", IMAGE_ROOT) for task in TASKS}


@pytest.fixture(scope="module")
def oi_world() -> World:
    return openimages_like()


@pytest.fixture(scope="module")
def oi_index(oi_world):
    return oi_world.sampling_index()


@pytest.fixture(scope="module")
def oi_items(oi_index) -> dict[str, pa.Table]:
    cfg = BenchmarkConfig(seed=3, items_per_cell=10)
    return {task: generate_task(oi_index, task, cfg, "eval", IMAGE_ROOT) for task in TASKS}


def test_the_worlds_hold_what_the_tests_rely_on(world, oi_world):
    """The material is as intended: every count 1-4 for each fruit, the crowd image, the parent boxes."""
    for fruit in FRUIT:
        per_count = Counter(world.count(i, fruit) for i in world.contents if i != CROWD_IMAGE)
        assert all(per_count[k] >= 2 for k in (1, 2, 3, 4)), (fruit, per_count)
    assert world.contents["img020"] == {"apple": 4, "person": 1}
    assert world.contents[CROWD_IMAGE] == {"apple": 4, "pear": 2}
    assert oi_world.contents["i052"] == {"Apple": 4, "Fruit": 1, "Cake": 2}  # the other 4-apple image is i020
    assert oi_world.contents["i020"] == {"Apple": 4}
    assert oi_world.ancestors("Apple") == {"Fruit", "Food"}
    assert oi_world.parents("Tomato") == {"Fruit", "Vegetable"}


# ---- helpers: one row's ground truth -----------------------------------------------------------------


def rows_of(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def spread_of(per_image: list[int]) -> str:
    """The spread pattern of per-image counts: "2-1-1-0"."""
    return "-".join(str(k) for k in sorted(per_image, reverse=True))


def check_common_columns(world: World, item: dict) -> None:
    ids = item["image_ids"]
    assert len(set(ids)) == len(ids), f"{item['item_id']}: repeated image"
    assert item["n_images"] == len(ids) == len(item["image_roles"]) == len(item["image_paths"])
    assert item["image_paths"] == [str(IMAGE_ROOT / f"{i}.jpg") for i in ids]
    assert item["answer"] == world.answer(item["task"], ids, item["query"]), item["item_id"]
    assert (item["source"], item["split"]) == (world.source, world.split)
    if item["n_distractors"] is not None:
        assert item["n_distractors"] == item["image_roles"].count("distractor"), item["item_id"]


def check_counting_item(world: World, item: dict) -> None:
    check_common_columns(world, item)
    ids, query, roles = item["image_ids"], item["query"], item["image_roles"]
    per_image = [world.total([i], query) for i in ids]
    assert len(set(query)) == len(query) and all(world.is_leaf(q) for q in query), item["item_id"]
    for image, role, k in zip(ids, roles, per_image):
        assert role == ("needle" if k else "distractor"), (item["item_id"], image, role, k)
        assert not any((image, q) in world.crowd for q in query), f"{item['item_id']}: crowd image {image} used"
        assert not (set(world.contents[image]) & set().union(*(world.ancestors(q) for q in query))), item["item_id"]
    struct = json.loads(item["answer_struct"])
    assert struct["total"] == int(item["answer"])
    assert struct["counts"] == {q: [world.count(i, q) for i in ids] for q in query}
    axis = item["axis"]
    if axis == "spread":
        assert item["spread"] == spread_of(per_image) and len(ids) == 4 and sum(per_image) == 4
    if axis == "distractors":
        needles = [k for k in per_image if k]
        total = sum(needles)
        assert total in (2, 3, 4)
        assert needles == ([total] if item["placement"] == "concentrated" else [1] * total), item["item_id"]
        assert item["n_distractors"] == per_image.count(0) == int(item["axis_value"].split("/")[1])
    if axis == "concepts":
        assert item["n_concepts"] == len(query) and len(ids) == 4 and all(per_image)
    if axis == "n_images":
        assert str(len(ids)) == item["axis_value"] and 1 <= sum(per_image) <= 8


def assert_unambiguous_for_parent(world: World, item: dict, image: str, parent: str) -> None:
    """No box of the parent class itself, nor of a child that has children of its own (such a box could be
    any of them)."""
    held = set(world.contents[image])
    assert parent not in held, f"{item['item_id']}: {image} has a box of the parent {parent}"
    assert not {c for c in world.children(parent) if not world.is_leaf(c)} & held, (item["item_id"], image, held)


def check_listing_item(world: World, item: dict) -> None:
    check_common_columns(world, item)
    ids, parent = item["image_ids"], item["query"][0]
    assert len(world.children(parent)) >= 2
    for image, role in zip(ids, item["image_roles"]):
        holds = world.leaf_children_in(image, parent)
        assert role == ("needle" if holds else "distractor"), (item["item_id"], image, role)
        assert_unambiguous_for_parent(world, item, image, parent)
        if role == "distractor":
            assert not world.children(parent) & set(world.contents[image]), (item["item_id"], image)
    listed = world.listed(ids, parent)
    assert json.loads(item["answer_struct"])["categories"] == listed
    if item["axis"] == "n_subcategories":
        assert item["n_subcategories"] == len(listed) and len(ids) == 4
    if item["axis"] == "distractors":
        assert item["image_roles"].count("needle") == 2 and 1 <= len(listed) <= 4
        assert item["n_distractors"] == int(item["axis_value"])
    if item["axis"] == "n_images":
        assert str(len(ids)) == item["axis_value"] and 1 <= len(listed) <= 4


def check_common_item(world: World, item: dict) -> None:
    check_common_columns(world, item)
    assert world.in_every_image(item["image_ids"]) == [item["answer"]], item["item_id"]
    assert item["query"] == [] and str(len(item["image_ids"])) == item["axis_value"]


def check_odd_one_item(world: World, item: dict) -> None:
    check_common_columns(world, item)
    ids, parent, n = item["image_ids"], item["query"][0], len(item["image_ids"])
    presence = world.presence(ids, parent)
    assert n >= 3 and str(n) == item["axis_value"]
    assert 0 < presence[item["answer"]] < n / 2, (item["item_id"], presence)
    assert all(c > n / 2 for name, c in presence.items() if name != item["answer"]), (item["item_id"], presence)
    assert json.loads(item["answer_struct"])["presence"] == presence
    assert all(role == "needle" for role in item["image_roles"])
    for image in ids:
        assert_unambiguous_for_parent(world, item, image, parent)


CHECKS = {"counting": check_counting_item, "listing": check_listing_item, "common": check_common_item,
          "odd_one": check_odd_one_item}  # fmt: skip


# ---- 1. every generated item, checked against the dict ----------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_generated_item_is_right_by_the_dict(world, items, task):
    table = items[task]
    cells = CFG.cells(task)
    assert table.num_rows == len(cells) * CFG.items_per_cell
    assert Counter(zip(table.column("axis").to_pylist(), table.column("axis_value").to_pylist())) == {
        (c.axis, c.axis_value): CFG.items_per_cell for c in cells
    }
    assert len(set(table.column("item_id").to_pylist())) == table.num_rows
    assert set(table.column("seed").to_pylist()) == {CFG.seed}
    assert set(table.column("config_hash").to_pylist()) == {CFG.hash}
    for item in rows_of(table):
        CHECKS[task](world, item)


def test_counting_spread_and_distractor_columns(items):
    rows = rows_of(items["counting"])
    spreads = Counter(r["spread"] for r in rows if r["axis"] == "spread")
    assert spreads == {"4-0-0-0": 6, "3-1-0-0": 6, "2-2-0-0": 6, "2-1-1-0": 6, "1-1-1-1": 6}
    distractors = Counter((r["placement"], r["n_distractors"]) for r in rows if r["axis"] == "distractors")
    assert distractors == {(p, d): 6 for p in ("concentrated", "balanced") for d in (0, 1, 2, 4, 6)}
    assert Counter(r["n_concepts"] for r in rows if r["axis"] == "concepts") == {1: 6, 2: 6, 3: 6}
    assert Counter(r["n_images"] for r in rows if r["axis"] == "n_images") == {n: 6 for n in (1, 2, 4, 6, 8, 10)}


def test_the_crowd_image_never_serves_apple(world, index):
    """Over many counting items apple is queried, yet img080 (4 apples, one a crowd box) is never used for it."""
    cfg = BenchmarkConfig(seed=11, items_per_cell=20)
    table = generate_task(index, "counting", cfg, "eval", IMAGE_ROOT)
    apple_items = [r for r in rows_of(table) if "apple" in r["query"]]
    assert len(apple_items) >= 20
    assert not any(CROWD_IMAGE in r["image_ids"] for r in apple_items)
    for item in rows_of(table):
        check_counting_item(world, item)


# ---- 2. what the samplers must refuse ----------------------------------------------------------------


def only_cell(cfg: BenchmarkConfig, task: str, axis_value: str, n: int = 1) -> list[int]:
    """Item counts per cell that ask for `n` items of one cell only."""
    return [n if c.axis_value == axis_value else 0 for c in cfg.cells(task)]


def test_spread_4_0_0_0_needs_an_image_with_exactly_four(world):
    """Counts capped at 3 except the crowd image (4 apples, crowd): no usable image holds 4 of anything."""
    contents = {i: {n: min(k, 3) for n, k in c.items()} for i, c in world.contents.items()}
    contents[CROWD_IMAGE] = {"apple": 4}
    index = World("tiny", "val", contents, world.edges, world.crowd).sampling_index()
    cfg = BenchmarkConfig(items_per_cell=1)
    with pytest.raises(SamplingError, match=r"per-image counts \[4, 0, 0, 0\]"):
        generate_task(index, "counting", cfg, "eval", IMAGE_ROOT, sizes=only_cell(cfg, "counting", "4-0-0-0"))
    table = generate_task(index, "counting", cfg, "eval", IMAGE_ROOT, sizes=only_cell(cfg, "counting", "3-1-0-0", 5))
    assert table.column("answer").to_pylist() == ["4"] * 5


def no_hierarchy_world() -> World:
    """Parents with one leaf child each: person (its own supercategory), sports -> ball, tool -> hammer
    (saw is a tool too but has no box in this split), Food -> Fruit (not a leaf) and Bread; Fruit -> Apple."""
    kinds = ["person", "ball", "hammer", "Apple", "Bread"]
    contents = {f"n{i:02d}": {kinds[i % 5]: 1 if i < 30 else 2} for i in range(40)}
    edges = [("person", "person"), ("ball", "sports"), ("hammer", "tool"), ("saw", "tool"),
             ("Fruit", "Food"), ("Bread", "Food"), ("Apple", "Fruit")]  # fmt: skip
    return World("flat", "val", contents, edges)


def test_listing_and_odd_one_refuse_an_index_without_a_hierarchy():
    index = no_hierarchy_world().sampling_index()
    with pytest.raises(SamplingError, match="hierarchy"):
        ListingSampler(index)
    for task in ("listing", "odd_one"):
        with pytest.raises(SamplingError, match="hierarchy"):
            generate_task(index, task, BenchmarkConfig(items_per_cell=1), "eval", IMAGE_ROOT)
    # the same index still serves Counting
    counting = generate_task(index, "counting", BenchmarkConfig(items_per_cell=1), "eval", IMAGE_ROOT,
                             sizes=only_cell(BenchmarkConfig(), "counting", "1-1-1-1"))  # fmt: skip
    assert counting.column("answer").to_pylist() == ["4"]


def test_common_refuses_when_two_categories_always_go_together():
    """apple and pear are in every image (plum in some): no image set has exactly one common category."""
    contents = {f"t{i:02d}": {"apple": 1 + i % 3, "pear": 1 + i % 2} for i in range(40)}
    for i in range(0, 40, 3):
        contents[f"t{i:02d}"]["plum"] = 1
    world = World("pairs", "val", contents, [("apple", "fruit"), ("pear", "fruit"), ("plum", "fruit")])
    index = world.sampling_index()
    for n in (1, 2, 4):
        sizes = only_cell(BenchmarkConfig(), "common", str(n))
        with pytest.raises(SamplingError, match="exactly one common category"):
            generate_task(index, "common", BenchmarkConfig(items_per_cell=1), "eval", IMAGE_ROOT, sizes=sizes)


@pytest.mark.parametrize("task", TASKS)
def test_openimages_like_items_are_right_by_the_dict(oi_world, oi_items, task):
    for item in rows_of(oi_items[task]):
        CHECKS[task](oi_world, item)


def test_a_box_of_the_parent_class_keeps_an_image_from_serving_its_children(oi_world, oi_index, oi_items):
    """i052 holds 4 Apples and a "Fruit" box: it never serves Apple (nor any Fruit child), though Apple is
    queried and the Fruit family is listed; every 4-0-0-0 item of Apple takes i020, the one clean 4-apple image."""
    fruit_box = {i for i, c in oi_world.contents.items() if "Fruit" in c}
    counting = rows_of(oi_items["counting"])
    queried = Counter(q for r in counting for q in r["query"])
    assert queried["Apple"] >= 10 and "Fruit" not in queried
    for r in counting:
        if set(r["query"]) & set(OI_FRUIT):
            assert not fruit_box & set(r["image_ids"]), (r["item_id"], r["query"], fruit_box & set(r["image_ids"]))
    cfg = BenchmarkConfig(seed=4)
    sizes = only_cell(cfg, "counting", "4-0-0-0", 80)
    four = rows_of(generate_task(oi_index, "counting", cfg, "eval", IMAGE_ROOT, sizes=sizes))
    apple_needles = [i for r in four if r["query"] == ["Apple"]
                     for i, role in zip(r["image_ids"], r["image_roles"]) if role == "needle"]  # fmt: skip
    assert len(apple_needles) >= 3 and set(apple_needles) == {"i020"}
    for task in ("listing", "odd_one"):
        fruit_items = [r for r in rows_of(oi_items[task]) if r["query"] == ["Fruit"]]
        assert len(fruit_items) >= 2  # Odd-One of Fruit is rare (Fruit boxes leave few usable images): 4-15 of 50
        assert not any(fruit_box & set(r["image_ids"]) for r in fruit_items)


@pytest.mark.parametrize("task", ["listing", "odd_one"])
def test_a_box_of_a_non_leaf_child_keeps_an_image_from_serving_a_box_less_parent(oi_world, oi_items, task):
    """Food has no boxes; its child Fruit is not a leaf and has boxes. A "Fruit" box is some food that is
    none of Food's listed children (Bread, Cake), so an image holding one is ambiguous for Food
    (SamplingIndex.ambiguity_set: "the parent class itself and every category below it that is not one of its
    leaf children")."""
    fruit_box = {i for i, c in oi_world.contents.items() if "Fruit" in c}
    food_items = [r for r in rows_of(oi_items[task]) if r["query"] == ["Food"]]
    assert len(food_items) >= 5
    offending = sorted(r["item_id"] for r in food_items if fruit_box & set(r["image_ids"]))
    assert offending == []


@pytest.mark.parametrize("task", ["listing", "odd_one"])
def test_a_parent_is_never_asked_about_an_image_holding_a_grandchild(oi_world, oi_items, task):
    """Apple is a Fruit, so a Food: an image with apples but no bread or cake cannot be a Food distractor,
    and one with bread and apples cannot answer "Bread" alone to "Which kinds of food appear?". Food's
    answers are its leaf children (Bread, Cake); its other descendants must keep an image out, as a
    "Fruit" box does."""
    unlisted = {"Fruit", "Vegetable", "Apple", "Pear", "Plum", "Tomato", "Carrot"}  # below Food, not its leaf children
    assert all("Food" in oi_world.ancestors(n) for n in unlisted)
    food_items = [r for r in rows_of(oi_items[task]) if r["query"] == ["Food"]]
    offending = {r["item_id"]: {i: sorted(unlisted & set(oi_world.contents[i])) for i in r["image_ids"]
                                if unlisted & set(oi_world.contents[i])} for r in food_items}  # fmt: skip
    assert {k: v for k, v in offending.items() if v} == {}


# ---- 3. the validity engine on hand-made bad drafts --------------------------------------------------


def draft(index, ids: list[str], roles: list[str] | str, query: list[str], answer: str) -> ItemDraft:
    roles = [roles] * len(ids) if isinstance(roles, str) else roles
    return ItemDraft(image_positions(index, ids), roles, query, answer, {})


def test_the_images_the_validity_cases_use(world):
    assert world.contents["img000"] == {"apple": 1, "person": 1}
    assert world.contents["img001"] == {"pear": 1, "grape": 1}
    assert world.contents["img002"] == {"plum": 1}
    assert world.contents["img004"] == {"apple": 2}
    assert world.contents["img005"] == {"pear": 2, "person": 2}
    assert world.contents["img009"] == {"pear": 1, "grape": 1}
    assert world.contents["img013"] == {"pear": 3}
    assert world.contents["img064"] == {"hammer": 1}


VALIDITY_CASES = [
        ("counting", ["img020", "img064"], ["needle", "distractor"], ["apple"], "4", []),
        ("counting", ["img020", "img064"], ["needle", "distractor"], ["apple"], "5",
         ["answer '5' but the index gives '4'"]),
        ("counting", ["img020", "img004"], ["needle", "distractor"], ["apple"], "6",
         ["distractor img004 holds a queried class"]),
        ("counting", ["img020", "img020"], "needle", ["apple"], "8", ["an image appears twice"]),
        ("counting", [CROWD_IMAGE, "img064"], ["needle", "distractor"], ["pear"], "2", []),
        ("common", ["img005", "img013"], "needle", [], "pear", []),
        ("common", ["img001", "img009"], "needle", [], "pear",
         ["answer 'pear' but the index gives 'grape, pear'", "several categories are in every image: grape, pear"]),
        ("listing", ["img001", "img000"], "needle", ["fruit"], "apple, grape, pear", []),
        ("listing", ["img001", "img000"], "needle", ["fruit"], "apple, pear",
         ["answer 'apple, pear' but the index gives 'apple, grape, pear'"]),
        ("listing", ["img002", "img000"], ["needle", "distractor"], ["fruit"], "apple, plum",
         ["distractor img000 holds a child of 'fruit'"]),
        ("odd_one", ["img005", "img013", "img001"], "needle", ["fruit"], "grape", []),
        ("odd_one", ["img005", "img013", "img001"], "needle", ["fruit"], "pear",
         ["answer 'pear' but the index gives 'grape'", "not exactly one minority child"]),
]  # fmt: skip


@pytest.mark.parametrize(("task", "ids", "roles", "query", "answer", "problems"), VALIDITY_CASES)
def test_validity_engine_finds_exactly_the_problems(index, world, task, ids, roles, query, answer, problems):
    """`problems`: one text fragment per problem the engine must report, and no other problem."""
    found = item_problems(index, task, draft(index, ids, roles, query, answer))
    assert len(found) == len(problems) and all(any(p in f for f in found) for p in problems), found
    # the engine's derived answer is the dict's
    assert derive_answer(index, task, image_positions(index, ids), query) == world.answer(task, ids, query)


@pytest.mark.parametrize("task", TASKS)
def test_validity_engine_judges_a_cell_item_by_item(index, task):
    """Generation checks a whole cell at once: with good and bad items of several lengths mixed in one
    batch, each item gets exactly the problems it has alone, and the good ones none."""
    cases = [(ids, roles, query, answer) for t, ids, roles, query, answer, _ in VALIDITY_CASES if t == task]
    drafts = [draft(index, *case) for case in cases]
    drafts.append(draft(index, ["img020"], "needle", ["apple"], "4") if task == "counting" else
                  draft(index, cases[0][0] + ["img064"], "needle", cases[0][2], "?"))  # fmt: skip
    drafts.insert(1, drafts[-1])
    alone = {k: item_problems(index, task, d) for k, d in enumerate(drafts)}
    assert {k for k, found in alone.items() if found} != set() and [] in alone.values()
    assert batch_problems(index, task, ItemBatch.from_drafts(drafts)) == {k: found for k, found in alone.items() if found}


def test_validity_engine_catches_a_crowd_image(index):
    bad = draft(index, [CROWD_IMAGE, "img064"], ["needle", "distractor"], ["apple"], "4")
    problems = item_problems(index, "counting", bad)
    assert f"image {CROWD_IMAGE} has a crowd box of a queried class" in problems


def test_validity_engine_catches_an_odd_one_tie_at_half(index, world):
    """pear in 3 of 4, grape in exactly 2 of 4 (a tie at half), apple in 1: apple is the minority, but
    grape is neither a minority nor a majority."""
    ids = ["img001", "img009", "img005", "img000"]
    assert world.presence(ids, "fruit") == {"pear": 3, "grape": 2, "apple": 1}
    problems = item_problems(index, "odd_one", draft(index, ids, "needle", ["fruit"], "apple"))
    assert len(problems) == 1 and "presence over 4 images" in problems[0]
    assert "not exactly one minority child" in problems[0]


def test_validity_engine_odd_one_needs_three_images(index):
    problems = item_problems(index, "odd_one", draft(index, ["img005", "img001"], "needle", ["fruit"], "grape"))
    assert "Odd-One needs at least 3 images" in problems


def test_validity_engine_on_the_hierarchy(oi_index, oi_world):
    assert oi_world.contents["i012"] == {"Apple": 3, "Fruit": 1}
    problems = item_problems(oi_index, "counting", draft(oi_index, ["i012", "i020"], "needle", ["Apple"], "7"))
    assert problems == ["image i012 has a box of a parent of a queried class"]
    problems = item_problems(oi_index, "counting", draft(oi_index, ["i012"], "needle", ["Fruit"], "1"))
    assert "a queried class has sub-classes" in problems
    problems = item_problems(oi_index, "listing", draft(oi_index, ["i012", "i020"], "needle", ["Fruit"], "Apple"))
    assert problems == ["image i012 holds the parent class or a category below it that is none of its kinds"]


# ---- 4. the SQL re-derivation agrees with the Python engine ------------------------------------------


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, world, oi_world) -> Path:
    """Both worlds in one catalogue: the checks must only join each item to its own source."""
    db = tmp_path_factory.mktemp("catalogue") / "mimic.duckdb"
    catalog.replace_source_index(db, world.annotation_index())
    catalog.replace_source_index(db, oi_world.annotation_index())
    return db


def sql_flagged(db: Path, table: pa.Table, path: Path) -> dict[str, set[str]]:
    """{check: item ids it flags} for `repeated_images` and the table's task check."""
    write_items(table, path)
    task = table.column("task")[0].as_py()
    out = catalog.item_check_failures(db, path, ["repeated_images", task])
    return {check: {row[0] for row in rows} for check, (_, rows) in out.items()}


def python_flagged(index, table: pa.Table) -> set[str]:
    """Item ids the validity engine finds any problem with."""
    out = set()
    for r in rows_of(table):
        d = ItemDraft(image_positions(index, r["image_ids"]), r["image_roles"], r["query"], r["answer"], {})
        if item_problems(index, r["task"], d):
            out.add(r["item_id"])
    return out


@pytest.mark.parametrize("task", TASKS)
def test_sql_finds_nothing_wrong_with_generated_items(catalogue, index, items, task, tmp_path):
    flagged = sql_flagged(catalogue, items[task], tmp_path / f"{task}.parquet")
    assert flagged == {"repeated_images": set(), task: set()}
    assert python_flagged(index, items[task]) == set()


def first(rows: list[dict], **where) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in where.items()))


def corrupted(items: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], dict[str, set[str]]]:
    """Each task's items with hand-made faults, and {check: the item ids that must be flagged}."""
    rows = {task: copy.deepcopy(rows_of(items[task])) for task in TASKS}
    expect: dict[str, set[str]] = {"repeated_images": set(), "wrong_answer": set(), **{t: set() for t in TASKS}}

    a = first(rows["counting"], axis="spread", spread="2-1-1-0")  # wrong total
    a["answer"] = str(int(a["answer"]) + 1)
    expect["counting"].add(a["item_id"])
    expect["wrong_answer"].add(a["item_id"])
    b = first(rows["counting"], axis="distractors", placement="balanced", n_distractors=2)  # a needle called a distractor
    b["image_roles"][b["image_roles"].index("needle")] = "distractor"
    expect["counting"].add(b["item_id"])
    c = first(rows["counting"], axis="spread", spread="1-1-1-1")  # an image twice (the total stays 4)
    c["image_ids"][1], c["image_paths"][1] = c["image_ids"][0], c["image_paths"][0]
    expect["repeated_images"].add(c["item_id"])

    crowd = {**copy.deepcopy(c), "item_id": "apple-in-the-crowd-image", "query": ["apple"], "answer": "4",
             "image_ids": [CROWD_IMAGE], "image_paths": [str(IMAGE_ROOT / f"{CROWD_IMAGE}.jpg")], "image_roles": ["needle"]}
    rows["counting"].append(crowd)  # 4 apples, one box a crowd: not countable
    expect["counting"].add(crowd["item_id"])

    d = first(rows["listing"], axis="n_subcategories", n_subcategories=2)  # a present child left out
    d["answer"] = d["answer"].split(", ")[1]
    expect["listing"].add(d["item_id"])
    expect["wrong_answer"].add(d["item_id"])
    e = first(rows["listing"], axis="distractors", n_distractors=1)  # a needle called a distractor
    e["image_roles"][e["image_roles"].index("needle")] = "distractor"
    expect["listing"].add(e["item_id"])

    f = first(rows["common"], axis="n_images", n_images=4)
    f["answer"] = "saw" if f["answer"] != "saw" else "pear"
    expect["common"].add(f["item_id"])
    expect["wrong_answer"].add(f["item_id"])

    g = first(rows["odd_one"], axis="n_images", n_images=6)  # the answer replaced by a majority child
    presence = json.loads(g["answer_struct"])["presence"]
    g["answer"] = max(presence, key=presence.get)
    expect["odd_one"].add(g["item_id"])
    expect["wrong_answer"].add(g["item_id"])
    return {t: pa.Table.from_pylist(rows[t], schema=items[t].schema) for t in TASKS}, expect


def test_sql_and_python_flag_exactly_the_corrupted_items(catalogue, index, world, items, tmp_path):
    tables, expect = corrupted(items)
    for task, table in tables.items():
        flagged = sql_flagged(catalogue, table, tmp_path / f"bad_{task}.parquet")
        ids = set(table.column("item_id").to_pylist())
        assert flagged == {"repeated_images": expect["repeated_images"] & ids, task: expect[task]}, task
        assert python_flagged(index, table) == flagged["repeated_images"] | flagged[task], task
        # and the dict agrees on which answers are wrong
        wrong = {r["item_id"] for r in rows_of(table) if r["answer"] != world.answer(task, r["image_ids"], r["query"])}
        assert wrong == expect["wrong_answer"] & ids, task


@pytest.mark.parametrize("task", TASKS)
def test_sql_agrees_with_python_on_the_openimages_like_hierarchy(catalogue, oi_index, oi_items, task, tmp_path):
    """Valid items (the engine finds no problem) must pass the SQL checks too."""
    assert python_flagged(oi_index, oi_items[task]) == set()
    flagged = sql_flagged(catalogue, oi_items[task], tmp_path / f"oi_{task}.parquet")
    assert flagged == {"repeated_images": set(), task: set()}


def hand_counting_item(items: dict[str, pa.Table], item_id: str, query: list[str], ids: list[str], answer: str) -> dict:
    """A counting row of the n_images study, made by hand: the first image a needle, the others distractors."""
    template = rows_of(items["counting"])[0]
    return {**template, "item_id": item_id, "axis": "n_images", "axis_value": str(len(ids)), "spread": None,
            "n_images": len(ids), "n_distractors": None, "placement": None, "query": query, "image_ids": ids,
            "image_paths": [str(IMAGE_ROOT / f"{i}.jpg") for i in ids],
            "image_roles": ["needle"] + ["distractor"] * (len(ids) - 1), "answer": answer}  # fmt: skip


def test_sql_flags_what_python_flags_on_the_hierarchy(catalogue, oi_index, oi_world, oi_items, tmp_path):
    """Items that use an image with a box of the queried class's parent (i052: 4 Apples and a "Fruit" box),
    answers unchanged: the validity engine rejects them, so must the SQL checks."""
    assert oi_world.contents["i065"] == {"Carrot": 4}
    counting = hand_counting_item(oi_items, "apple-under-a-fruit-box", ["Apple"], ["i052", "i065"], "4")
    listing = copy.deepcopy(first(rows_of(oi_items["listing"]), query=["Fruit"], axis="n_images"))
    listing["image_ids"][0], listing["image_paths"][0] = "i052", str(IMAGE_ROOT / "i052.jpg")
    listing["answer"] = oi_world.answer("listing", listing["image_ids"], ["Fruit"])  # the answer fits the new image
    python, sql = {}, {}
    for task, row in (("counting", counting), ("listing", listing)):
        assert row["answer"] == oi_world.answer(task, row["image_ids"], row["query"])
        table = pa.Table.from_pylist([row], schema=oi_items[task].schema)
        python[task] = python_flagged(oi_index, table)
        sql[task] = set().union(*sql_flagged(catalogue, table, tmp_path / f"{task}.parquet").values())
    assert python == {"counting": {counting["item_id"]}, "listing": {listing["item_id"]}}
    assert sql == python


def test_sql_counts_a_class_with_two_parents_once(catalogue, oi_index, oi_world, oi_items, tmp_path):
    """Tomato has two category rows (parents Fruit and Vegetable); i003 holds one tomato."""
    assert oi_world.contents["i003"] == {"Tomato": 1}
    item = hand_counting_item(oi_items, "tomato", ["Tomato"], ["i003"], "1")
    table = pa.Table.from_pylist([item], schema=oi_items["counting"].schema)
    assert python_flagged(oi_index, table) == set()
    assert sql_flagged(catalogue, table, tmp_path / "tomato.parquet") == {"repeated_images": set(), "counting": set()}


# ---- 5. determinism ----------------------------------------------------------------------------------


def generate_all(world: World, cfg: BenchmarkConfig) -> dict[str, pa.Table]:
    index = world.sampling_index()  # a fresh index: no cached state carried over
    return {task: generate_task(index, task, cfg, "eval", IMAGE_ROOT) for task in TASKS}


def test_same_config_and_index_give_byte_identical_parquet(world, items, tmp_path):
    again = generate_all(world, CFG)
    for task in TASKS:
        first_file = write_items(items[task], tmp_path / f"a_{task}.parquet")
        second_file = write_items(again[task], tmp_path / f"b_{task}.parquet")
        assert first_file.read_bytes() == second_file.read_bytes(), task


def test_the_output_is_the_same_for_any_number_of_workers(index, tmp_path):
    """5,000 items: enough for generate_task to split the cells over processes."""
    cfg = BenchmarkConfig(seed=5)
    sizes = [2500, 2500, 0, 0, 0, 0]  # Common over 1 and 2 images: the quickest cells
    files = [
        write_items(generate_task(index, "common", cfg, "eval", IMAGE_ROOT, sizes=sizes, workers=w), tmp_path / f"{w}.parquet")
        for w in (1, 2)
    ]
    assert files[0].read_bytes() == files[1].read_bytes()


def test_another_seed_or_purpose_gives_other_items(world, index, items):
    other = generate_all(world, BenchmarkConfig(seed=CFG.seed + 1, items_per_cell=6))
    for task in TASKS:
        before, after = items[task].column("image_ids").to_pylist(), other[task].column("image_ids").to_pylist()
        assert sum(a != b for a, b in zip(before, after)) > len(before) / 2, task
    train = generate_task(index, "counting", CFG, "train", IMAGE_ROOT)
    assert train.column("image_ids").to_pylist() != items["counting"].column("image_ids").to_pylist()


def with_study(study_path: tuple[str, str, str], value) -> BenchmarkConfig:
    studies = copy.deepcopy(DEFAULT_STUDIES)
    task, axis, key = study_path
    studies[task][axis][key] = value
    return BenchmarkConfig(seed=CFG.seed, items_per_cell=CFG.items_per_cell, studies=studies)


def test_changing_one_study_leaves_the_other_tasks_items_as_they_were(world, items):
    cfg = with_study(("counting", "spread", "total"), 3)
    assert cfg.hash != CFG.hash
    changed = generate_all(world, cfg)
    assert changed["counting"].column("spread").to_pylist()[:6] == ["3-0-0-0"] * 6
    for task in ("listing", "common", "odd_one"):
        assert set(changed[task].column("config_hash").to_pylist()) == {cfg.hash}
        assert changed[task].drop_columns(["config_hash"]).equals(items[task].drop_columns(["config_hash"])), task


@pytest.mark.parametrize(
    ("study_path", "value"),
    [(("counting", "distractors", "totals"), [2, 3]),  # same cells, other draws in that study only
     (("counting", "spread", "total"), 3)],  # 3 cells instead of 5 ahead of the other counting studies
)  # fmt: skip
def test_changing_one_study_leaves_the_other_studies_of_its_task_as_they_were(world, items, study_path, value):
    """generate.py: "changing one study leaves the other cells' items as they were" (config.Cell.index:
    "part of the random seed, so adding a cell changes no other")."""
    changed = generate_all(world, with_study(study_path, value))["counting"]

    def others(table: pa.Table) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "config_hash"} for r in rows_of(table) if r["axis"] != study_path[1]]

    assert others(changed) == others(items["counting"])


def leaf_settings(studies: dict) -> list[tuple[str, str, str]]:
    return [(t, a, k) for t, axes in studies.items() for a, settings in axes.items() for k in settings]


def changed_value(value):
    if isinstance(value, list):
        return value[:-1] if isinstance(value[-1], str) else value + [value[-1] + 1]
    return value + 1


def test_config_hash_changes_with_every_study_value():
    hashes = {BenchmarkConfig(seed=0).hash}
    assert BenchmarkConfig(seed=0, studies=copy.deepcopy(DEFAULT_STUDIES)).hash in hashes
    paths = leaf_settings(DEFAULT_STUDIES)
    assert len(paths) == 19
    for t, a, k in paths:
        hashes.add(with_study((t, a, k), changed_value(DEFAULT_STUDIES[t][a][k])).hash)
    for other in (BenchmarkConfig(seed=1), BenchmarkConfig(items_per_cell=7), BenchmarkConfig(tasks=("counting",))):
        hashes.add(other.hash)
    assert len(hashes) == 1 + 19 + 3


# ---- 6. the answer-balance report --------------------------------------------------------------------


def answers_table(groups: dict[tuple[str, str], dict[str, int]]) -> pa.Table:
    rows = [(t, a, ans) for (t, a), counts in groups.items() for ans, n in counts.items() for _ in range(n)]
    return pa.table({"task": [r[0] for r in rows], "axis": [r[1] for r in rows], "answer": [r[2] for r in rows]})


def wilson_low(k: int, n: int, z: float = 1.959964) -> float:
    """Lower end of the 95% Wilson score interval of k successes in n."""
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def balance_row(task, axis, n, k, answer, share, low, limit, ok, fixed=False) -> dict:
    return {"task": task, "axis": axis, "n": n, "distinct_answers": k, "majority_answer": answer, "majority_share": share,
            "share_ci_low": low, "limit": limit, "ok": ok, "fixed_by_design": fixed}  # fmt: skip


def test_answer_balance_exact_rows():
    lows = [round(wilson_low(k, n), 4) for k, n in [(80, 200), (120, 200), (30, 30), (50, 200), (240, 600)]]
    assert lows == [0.3346, 0.5308, 0.8865, 0.1951, 0.3616]
    table = answers_table({
        ("counting", "concepts"): {"1": 120, "2": 27, "3": 27, "4": 26},  # 60% of 200 with k = 4: over 35%
        ("listing", "n_images"): {"plum": 50, "apple": 50, "pear": 50, "grape": 50},  # a tie: the first name
        ("common", "n_images"): {"pear": 80, "apple": 40, "plum": 40, "saw": 40},  # 40% of 200: CI reaches 35%
        ("odd_one", "n_images"): {"pear": 240, "apple": 120, "plum": 120, "saw": 120},  # 40% of 600: it does not
        ("counting", "spread"): {"4": 30},  # one answer by design
    })  # fmt: skip
    assert answer_balance(table) == [
        balance_row("common", "n_images", 200, 4, "pear", 0.4, 0.3346, 0.35, True),
        balance_row("counting", "concepts", 200, 4, "1", 0.6, 0.5308, 0.35, False),
        balance_row("counting", "spread", 30, 1, "4", 1.0, 0.8865, 1.0, True, fixed=True),
        balance_row("listing", "n_images", 200, 4, "apple", 0.25, 0.1951, 0.35, True),
        balance_row("odd_one", "n_images", 600, 4, "pear", 0.4, 0.3616, 0.35, False),
    ]


def test_answer_balance_fails_a_study_with_a_single_answer_not_fixed_by_design():
    """balance.py: studies fixed by design "cannot meet" the rule; neither can any other study whose every item
    has the same answer (always answering "3" is right 100% of the time)."""
    (row,) = answer_balance(answers_table({("counting", "distractors"): {"3": 100}}))
    assert (row["distinct_answers"], row["majority_share"], row["fixed_by_design"]) == (1, 1.0, False)
    assert row["ok"] is False


def test_answer_balance_of_generated_counting(items):
    rows = {r["axis"]: r for r in answer_balance(items["counting"])}
    assert rows["spread"] == balance_row("counting", "spread", 30, 1, "4", 1.0, 0.8865, 1.0, True, fixed=True)
    assert {r["n"] for r in rows.values()} == {30, 60, 18, 36} and len(rows) == 4


# ---- 7. baselines through the scoring path -----------------------------------------------------------


def test_oracle_scores_one_on_every_cell(world, index, items):
    table = pa.concat_tables([items[t] for t in TASKS])
    vocabulary = sorted({c for c, _ in world.edges})
    predictions = score_predictions(table, baseline_answers("oracle", table, index), "oracle", vocabulary=vocabulary)
    rows = metric_rows(predictions)
    cells = {(c.task, c.axis, c.axis_value) for t in TASKS for c in CFG.cells(t)}
    studies = {(t, a, "all") for t, a, _ in cells}
    assert {(r["task"], r["axis"], r["axis_value"]) for r in rows} == cells | studies
    assert [r for r in rows if r["value"] != 1.0] == []
    values_per_study = Counter((t, a) for t, a, _ in cells)
    assert all(r["n"] == (6 * values_per_study[(r["task"], r["axis"])] if r["axis_value"] == "all" else 6) for r in rows)


def test_majority_baseline_scores_the_majority_share(world, index, items):
    table = pa.concat_tables([items[t] for t in TASKS])
    predictions = score_predictions(table, baseline_answers("majority", table, index), "majority")
    got = {(r["task"], r["axis"], r["axis_value"]): r["value"]
           for r in metric_rows(predictions) if r["metric"] == "accuracy"}  # fmt: skip
    by_study: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in rows_of(table):  # (axis value, the dict's answer) per item
        answer = world.answer(r["task"], r["image_ids"], r["query"])
        by_study.setdefault((r["task"], r["axis"]), []).append((r["axis_value"], answer))
    for (task, axis), pairs in by_study.items():
        counts = Counter(answer for _, answer in pairs)
        top = max(counts.values())
        majority = min(a for a, n in counts.items() if n == top)
        assert got[(task, axis, "all")] == top / len(pairs), (task, axis)
        for value in {v for v, _ in pairs}:
            in_value = [a for v, a in pairs if v == value]
            assert got[(task, axis, value)] == sum(a == majority for a in in_value) / len(in_value), (task, axis, value)
    assert got[("counting", "spread", "all")] == 1.0  # every spread item's answer is 4


# ---- 8. the config's numbers -------------------------------------------------------------------------


def test_partitions_of_four_over_four_images_are_the_spread_patterns():
    assert partitions(4, 4) == [(4, 0, 0, 0), (3, 1, 0, 0), (2, 2, 0, 0), (2, 1, 1, 0), (1, 1, 1, 1)]
    assert partitions(3, 2) == [(3, 0), (2, 1)]


def test_items_per_task_splits_exactly():
    mix = {"counting": 0.4, "listing": 0.2, "common": 0.2, "odd_one": 0.2}
    split = items_per_task(198000, mix)
    assert split == {"counting": 79200, "listing": 39600, "common": 39600, "odd_one": 39600}
    assert sum(split.values()) == 198000
    # 7 = 2.8 + 1.4 * 3: the largest remainders (counting's 0.8, then the first of the 0.4s) take the 2 left over
    assert items_per_task(7, mix) == {"counting": 3, "listing": 1, "common": 2, "odd_one": 1}
    assert items_per_task(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    with pytest.raises(ValueError):
        items_per_task(10, {"a": 0})


def test_default_cells_per_task():
    cfg = BenchmarkConfig()
    assert {t: len(cfg.cells(t)) for t in TASKS} == {"counting": 24, "listing": 15, "common": 6, "odd_one": 5}
    assert [c.axis_value for c in cfg.cells("counting")] == [
        "4-0-0-0", "3-1-0-0", "2-2-0-0", "2-1-1-0", "1-1-1-1",
        *(f"{p}/{d}" for p in ("concentrated", "balanced") for d in (0, 1, 2, 4, 6)),
        "1", "2", "3", "1", "2", "4", "6", "8", "10",
    ]  # fmt: skip
    assert [(c.axis, c.axis_value) for c in cfg.cells("listing")] == [
        *(("n_subcategories", str(k)) for k in (1, 2, 3, 4)), *(("distractors", str(d)) for d in (0, 1, 2, 4, 6)),
        *(("n_images", str(n)) for n in (1, 2, 4, 6, 8, 10)),
    ]  # fmt: skip
    assert [c.axis_value for c in cfg.cells("odd_one")] == ["3", "4", "6", "8", "10"]
    assert [c.index for t in TASKS for c in cfg.cells(t)] == [*range(24), *range(15), *range(6), *range(5)]
    with pytest.raises(ValueError, match="unknown task"):
        cfg.cells("presence_of_mind")


# ---- 9. the vectorised draws every sampler builds on ---------------------------------------------------


def test_random_subsets_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    picks = draws.random_subsets(rng, np.full(20_000, 5), 2)
    assert picks.shape == (20_000, 2) and (picks[:, 0] != picks[:, 1]).all() and picks.min() >= 0 and picks.max() < 5
    pairs = Counter(tuple(sorted(p)) for p in picks.tolist())
    assert len(pairs) == 10 and all(1800 < n < 2200 for n in pairs.values()), pairs  # 2,000 each expected
    varied = draws.random_subsets(rng, np.array([3, 6, 1, 4]), np.array([3, 0, 1, 2]))
    assert [sorted(r[r >= 0].tolist()) for r in varied][::2] == [[0, 1, 2], [0]]
    assert [len(r[r >= 0]) for r in varied] == [3, 0, 1, 2] and varied[1].tolist() == [-1, -1, -1]


def test_pick_weighted_follows_the_weights_and_skips_rows_without_any():
    rng = np.random.default_rng(1)
    owner = np.repeat(np.arange(3), [3, 2, 0])  # row 2 has no entries at all
    weights = np.array([0, 1, 3, 0, 0])  # row 1: only zero weights
    chosen = np.stack([draws.pick_weighted(rng, owner, weights, 3) for _ in range(4000)])
    assert set(chosen[:, 1].tolist()) == {-1} and set(chosen[:, 2].tolist()) == {-1}
    share = Counter(chosen[:, 0].tolist())
    assert set(share) == {1, 2} and 0.72 < share[2] / 4000 < 0.78  # 3 of 4 expected


def test_stratified_takes_answers_in_turn_latest_draft_first():
    rng = np.random.default_rng(2)
    answers = np.array([1, 1, 1, 2, 2, 3])
    assert sorted(draws.stratified(rng, answers, 4).tolist()) == [1, 2, 4, 5]  # 1, 2, 3 (latest of each), then 1 again
    assert len(draws.stratified(rng, answers, 9)) == 6  # short: the caller reports it


def test_fill_keeps_each_row_in_place_and_gives_up_after_its_tries():
    rng = np.random.default_rng(3)

    def attempt(rows: int):
        value = rng.random(rows)
        return value < 0.3, {"value": value, "pair": np.stack([value, -value], axis=1)}

    got = draws.fill(500, 100, attempt)
    assert (got["value"] < 0.3).all() and (got["pair"][:, 0] == -got["pair"][:, 1]).all()
    assert len(set(got["value"].tolist())) == 500
    assert draws.fill(5, 3, lambda rows: (np.zeros(rows, bool), {"value": np.zeros(rows)})) is None


def test_draw_free_finds_rare_free_images_and_fails_when_too_few():
    """300 images, all but 4 holding an apple: the random rounds mostly miss, the exhaustive pass finds
    the rest; asking for more free images than exist is an error naming the cause."""
    contents = {f"a{i:03d}": {"apple": 1} for i in range(296)} | {f"f{i}": {"pear": 1} for i in range(4)}
    index = World("rare", "val", contents, [("apple", "fruit"), ("pear", "fruit")]).sampling_index()
    apple = index.name_index["apple"]
    free = set(image_positions(index, [f"f{i}" for i in range(4)]))
    taken = np.array([[min(free)]] * 50)
    got = index.draw_free(np.random.default_rng(4), index.counted_bits[[apple] * 50], np.full(50, 3), taken)
    assert all(set(row) == free - {min(free)} for row in got.tolist())
    with pytest.raises(SamplingError, match="fewer than 4 images free"):
        index.draw_free(np.random.default_rng(5), index.counted_bits[[apple]], np.array([4]), taken[:1])
