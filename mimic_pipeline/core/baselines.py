"""Reference answerers run through the same prediction and scoring path as models.

* `oracle`: answers every item from the annotation index (never from the stored answer), phrased
  the way a model might ("There are 4.", "The triangles.", "circle and ring"). It must score 100 on
  every cell: that proves generator, index and scorer agree.
* `majority`: the most common answer of the item's (task, study) in the set being evaluated.
* `random`: a uniformly random answer among those seen in the item's (task, study).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from .sampling.items import padded_rows
from .sampling.pools import SamplingIndex, image_positions
from .sampling.validity import derive_answers
from .text import number_word, pluralize

BASELINES = ("oracle", "majority", "random")


def phrase(task: str, answer: str, rng: np.random.Generator) -> str:
    """A canonical answer in one of several natural phrasings the scorer must understand."""
    style = int(rng.integers(0, 3))
    if task == "counting":
        n = int(answer)
        return [answer, f"There are {n}.", f"I count {number_word(n)} in total."][style]
    if task == "listing":
        names = answer.split(", ")
        if len(names) > 1 and style == 1:
            return ", ".join(names[:-1]) + " and " + names[-1]
        return [answer, answer, ", ".join(pluralize(n) for n in names)][style]
    return [answer, f"The {pluralize(answer)}.", f"It is the {answer}."][style]


def oracle_answers(items: pa.Table, index: SamplingIndex, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    tasks, ids, query = (items.column(c).to_pylist() for c in ("task", "image_ids", "query"))
    answers: list[str] = [""] * len(tasks)
    for task in sorted(set(tasks)):  # the validity engine derives a task's answers at once
        at = [k for k, t in enumerate(tasks) if t == task]
        images = padded_rows([image_positions(index, ids[k]) for k in at])
        for k, answer in zip(at, derive_answers(index, task, images, [query[k] for k in at])):
            answers[k] = answer
    return [phrase(task, answer, rng) for task, answer in zip(tasks, answers)]


def _answers_by_study(items: pa.Table) -> dict[tuple[str, str], Counter]:
    by_study: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for task, axis, answer in zip(items.column("task").to_pylist(), items.column("axis").to_pylist(),
                                  items.column("answer").to_pylist()):  # fmt: skip
        by_study[(task, axis)][answer] += 1
    return by_study


def majority_answers(items: pa.Table) -> list[str]:
    top = {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in _answers_by_study(items).items()}
    return [top[(t, a)] for t, a in zip(items.column("task").to_pylist(), items.column("axis").to_pylist())]


def random_answers(items: pa.Table, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    choices = {k: sorted(c) for k, c in _answers_by_study(items).items()}
    return [choices[(t, a)][int(rng.integers(0, len(choices[(t, a)])))]
            for t, a in zip(items.column("task").to_pylist(), items.column("axis").to_pylist())]  # fmt: skip


def baseline_answerer(name: str, items: pa.Table, index: SamplingIndex, seed: int = 0) -> Callable[[pa.Table], list[str]]:
    """`answer(batch)` for the prediction path. Answers are drawn once over the whole item set (the
    majority and random answers depend on the set's answer distribution), then looked up by item."""
    by_id = dict(zip(items.column("item_id").to_pylist(), baseline_answers(name, items, index, seed)))
    return lambda batch: [by_id[item_id] for item_id in batch.column("item_id").to_pylist()]


def baseline_answers(name: str, items: pa.Table, index: SamplingIndex, seed: int = 0) -> list[str]:
    if name == "oracle":
        return oracle_answers(items, index, seed)
    if name == "majority":
        return majority_answers(items)
    if name == "random":
        return random_answers(items, seed)
    raise ValueError(f"unknown baseline {name!r}; baselines are {', '.join(BASELINES)}")
