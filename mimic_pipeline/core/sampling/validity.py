"""The validity engine: re-derives every item's answer from the index and checks the hard rules.

Independent of how the samplers chose the images: it looks only at the item (its images, roles,
query and stored answer) and the index's per-image presence bits and counts. Generation runs it on
every item and refuses to write an invalid one; the Dagster check re-derives the answers once more
in SQL (`sql/item_checks.sql`) from the catalogue.
"""

from __future__ import annotations


from .counting import image_count
from .items import ItemDraft
from .pools import SamplingIndex


def _children_present(index: SamplingIndex, parent: str, image: int) -> set[str]:
    here = index.categories_in(image)
    return {index.names[c] for c in index.children_of[parent] if c in here}


def derive_answer(index: SamplingIndex, task: str, images: list[int], query: list[str]) -> str:
    """The canonical answer of an item, from the index alone (the oracle answers with this)."""
    if task == "counting":
        return str(sum(image_count(index, index.name_index[n], img) or 0 for img in images for n in query))
    if task == "listing":
        present = set().union(*(_children_present(index, query[0], img) for img in images))
        return ", ".join(sorted(present))
    if task == "common":
        common = set.intersection(*(index.categories_in(img) for img in images))
        return ", ".join(sorted(index.names[c] for c in common))
    if task == "odd_one":
        presence = _children_presence(index, query[0], images)
        return ", ".join(sorted(name for name, c in presence.items() if c < len(images) / 2))
    raise ValueError(f"unknown task {task!r}")


def _children_presence(index: SamplingIndex, parent: str, images: list[int]) -> dict[str, int]:
    presence: dict[str, int] = {}
    for img in images:
        for name in _children_present(index, parent, img):
            presence[name] = presence.get(name, 0) + 1
    return presence


def item_problems(index: SamplingIndex, task: str, item: ItemDraft) -> list[str]:
    """Every rule the item breaks (empty when valid)."""
    problems: list[str] = []
    images = [int(i) for i in item.images]
    if len(set(images)) != len(images):
        problems.append("an image appears twice")
    if len(item.roles) != len(images):
        problems.append("roles and images differ in length")
    if task == "counting":
        # one look-up per image serves both the re-derived total and the rules
        classes = [index.name_index[n] for n in item.query]
        if any(not index.leaf[c] for c in classes):
            problems.append("a queried class has sub-classes")
        ancestors = set().union(*(index.ancestors[c] for c in classes))
        total = 0
        for img, role in zip(images, item.roles):
            here = index.entries(img)
            found = [here.get(c, (0, False)) for c in classes]
            total += sum(count for count, _ in found)
            if any(crowd for _, crowd in found):
                problems.append(f"image {index.image_id(img)} has a crowd box of a queried class")
            elif role == "distractor" and any(count for count, _ in found):
                problems.append(f"distractor {index.image_id(img)} holds a queried class")
            if ancestors & here.keys():
                problems.append(f"image {index.image_id(img)} has a box of a parent of a queried class")
        derived = str(total)
    else:
        derived = derive_answer(index, task, images, item.query)
    if derived != item.answer:
        problems.append(f"answer {item.answer!r} but the index gives {derived!r}")

    if task in ("listing", "odd_one"):
        parent = item.query[0]
        ambiguous = index.ambiguity_set(parent)
        for img, role in zip(images, item.roles):
            if ambiguous & index.categories_in(img):
                problems.append(f"image {index.image_id(img)} holds the parent class or a category below it that is none of its kinds")
            if role == "distractor" and _children_present(index, parent, img):
                problems.append(f"distractor {index.image_id(img)} holds a child of {parent!r}")
        if task == "odd_one":
            n = len(images)
            if n < 3:
                problems.append("Odd-One needs at least 3 images")
            presence = _children_presence(index, parent, images)
            if any(c == n / 2 or (name != item.answer and c < n / 2) for name, c in presence.items()):
                problems.append(f"presence over {n} images is {presence}: not exactly one minority child")

    elif task == "common" and ", " in derived:
        problems.append(f"several categories are in every image: {derived}")
    return problems
