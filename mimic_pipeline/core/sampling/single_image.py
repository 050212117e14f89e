"""The single-image instruction set: questions about one image, for training the tiny base model.

Three kinds, mixed by config: counting ("How many X are there in this image?", 0 included),
presence ("Is there a X in this image?", yes and no balanced) and listing ("Which kinds of P appear
in this image?"). Same row schema as the multi-image items (axis `single_image`), so the same
scorer, views and trainer read them. A class is never asked about in an image where it is
ambiguous (a crowd box, or a box of one of its ancestors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ..text import pluralize
from .config import GENERATOR_VERSION, items_per_task
from .families import families
from .items import AXIS_COLUMNS, ITEM_SCHEMA, struct_json
from .pools import SamplingError, SamplingIndex

DEFAULT_SINGLE_IMAGE_MIX = {"counting": 0.5, "presence": 0.3, "listing": 0.2}
QUESTIONS = {
    "counting": "How many {plural} are there in this image? Answer with a number.",
    "presence": "Is there a {name} in this image? Answer yes or no.",
    "listing": "Which kinds of {parent} appear in this image? List the category names, separated by commas.",
}
MAX_TRIES = 100


def _class_question(index: SamplingIndex, rng: np.random.Generator, classes: list[int], present: bool):
    """(image, class, count) with the class present (count >= 1) or absent (0), never ambiguous."""
    for _ in range(MAX_TRIES):
        c = classes[int(rng.integers(0, len(classes)))]
        if present:
            pool = index.images_of(c)
            image = int(pool[rng.integers(0, len(pool))])
        else:
            image = int(rng.integers(0, index.n_images))
        count, crowd = (int(v) for v in index.counts_in(image, c))
        ambiguous = index.ancestors[c] and index.has_any(np.array([image]), index.bits(index.ancestors[c]))[0]
        if not crowd and (count > 0) == present and not ambiguous:
            return image, c, count
    raise SamplingError(f"{index.source}/{index.split}: no unambiguous {'positive' if present else 'negative'} "
                        f"single-image question found in {MAX_TRIES} tries")  # fmt: skip


def generate_single_image(
    index: SamplingIndex, n_items: int, seed: int, image_root: str | Path, mix: dict[str, float] | None = None,
    config_hash: str = "",
) -> pa.Table:  # fmt: skip
    rng = np.random.default_rng([seed, 3])
    classes = [c for c in range(len(index.names)) if index.leaf[c]]
    fams = families(index)
    parents = index.parent_names
    image_root = Path(image_root)
    rows = []
    for kind, n in items_per_task(n_items, mix or DEFAULT_SINGLE_IMAGE_MIX).items():
        for k in range(n):
            if kind in ("counting", "presence"):
                # counting: three in four questions about a class that is there; presence: yes and no alike
                present = k % 4 != 0 if kind == "counting" else k % 2 == 0
                image, c, count = _class_question(index, rng, classes, present=present)
                name = index.names[c]
                query, struct = [name], {"counts": {name: [count]}, "total": count}
                question = QUESTIONS[kind].format(plural=pluralize(name), name=name)
                answer = str(count) if kind == "counting" else ("yes" if count else "no")
            elif kind == "listing":
                if not parents:
                    raise SamplingError(f"{index.source}/{index.split}: no parent with two leaf children for listing")
                f = np.array([rng.integers(0, len(parents))])
                everything = np.left_shift(1, fams.size[f]) - 1
                pairs = fams.within(f, everything)
                _, (image,), (mask,) = fams.draw(rng, pairs, np.ones(len(pairs[0]), dtype=bool), 1)
                if image < 0:
                    raise SamplingError(f"{index.source}/{index.split}: no unambiguous image of {parents[int(f[0])]!r}")
                parent, names = parents[int(f[0])], index.kind_names(int(f[0]), int(mask))
                query, struct = [parent], {"categories": names, "per_image": [names]}
                question, answer = QUESTIONS[kind].format(parent=parent), ", ".join(names)
            else:
                raise ValueError(f"unknown single-image question kind {kind!r}; kinds: {', '.join(QUESTIONS)}")
            rows.append({
                "item_id": f"single.{kind}.{k:06d}", "task": kind, "axis": "single_image", "axis_value": "1",
                **{col: None for col in AXIS_COLUMNS}, "n_images": 1, "query": query,
                "image_ids": [index.image_id(image)], "image_paths": [str(image_root / index.file_name(image))],
                "image_roles": ["needle"], "question": question, "template_id": 0, "answer": answer,
                "answer_struct": struct_json(struct), "source": index.source, "split": index.split, "seed": seed,
                "generator_version": GENERATOR_VERSION, "config_hash": config_hash,
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)
