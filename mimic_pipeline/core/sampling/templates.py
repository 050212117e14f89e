"""Question templates: several paraphrases per task, one chosen per item by its random generator.

The chosen template's id is recorded on the item (`template_id`), so results can be split by
phrasing. Placeholders: `{images}` ("these images" / "this image"), `{every}` ("every one of these
images" / "this image"), `{what}` (the counted classes, plural), `{in_total}` (" in total" when
several classes are counted), `{parent}` / `{parents}` (the parent category, singular / plural).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..text import pluralize

TEMPLATES: dict[str, list[str]] = {
    "counting": [
        "How many {what} are there{in_total} in {images}? Answer with a number.",
        "Count the {what} across {images}. Answer with a number.",
        "In total, how many {what} can you see in {images}? Answer with a number.",
    ],
    "listing": [
        "Which kinds of {parent} appear in {images}? List the category names, separated by commas.",
        "List every kind of {parent} that you can see in {images}, separated by commas.",
        "Name all the types of {parent} present in {images}. Separate the names with commas.",
    ],
    "common": [
        "Which object category appears in {every}? Answer with the category name.",
        "Which kind of object is present in {every}? Answer with the category name.",
        "Name the object category that {every} contains.",
    ],
    "odd_one": [
        "Among the {parents} in {images}, which one appears in only a minority of the images? Answer with the category name.",
        "Looking at the {parents} in {images}, which kind appears in fewer than half of the images? Answer with the category name.",
        "Which kind of {parent} shows up in only a minority of {images}? Answer with the category name.",
    ],
}  # fmt: skip


def join_names(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def render_questions(task: str, rng: np.random.Generator, n_images: list[int], names: list[list[str]] | None = None,
                     parents: list[str] | None = None) -> tuple[list[str], list[int]]:  # fmt: skip
    """(question texts, template ids) of a cell's items: the counted class names (`names`) or the
    parent (`parents`) per item, where the task asks about them."""
    template_ids = rng.integers(0, len(TEMPLATES[task]), size=len(n_images)).tolist()
    names = names if names is not None else [()] * len(n_images)
    parents = parents if parents is not None else [""] * len(n_images)
    texts = [_format(task, t, k == 1, tuple(q), p) for t, k, q, p in zip(template_ids, n_images, names, parents)]
    return texts, template_ids


@lru_cache(maxsize=65_536)  # few distinct (template, names) pairs, asked for on every item
def _format(task: str, template_id: int, single: bool, names: tuple[str, ...], parent: str) -> str:
    return TEMPLATES[task][template_id].format(
        images="this image" if single else "these images",
        every="this image" if single else "every one of these images",
        what=join_names([pluralize(n) for n in names]) if names else "",
        in_total=" in total" if len(names) > 1 else "",
        parent=parent,
        parents=pluralize(parent) if parent else "",
    )
