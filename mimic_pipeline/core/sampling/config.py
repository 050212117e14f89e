"""The benchmark definition as data: tasks, studies (axes) and their values, sizes and mix.

Every number of MIMIC.md section 3 is a value here, so a user changes the benchmark by config, and
the config hash recorded on every item (and used as the assets' data version) changes with it.
A *cell* is one (task, study, axis value); eval sets hold `items_per_cell` items per cell.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from functools import cached_property

from ..files import config_hash

GENERATOR_VERSION = "mimic-sampler/2"
TASKS = ("counting", "listing", "common", "odd_one")

DEFAULT_STUDIES: dict[str, dict[str, dict]] = {
    "counting": {
        # `total` instances over `n_images` images, every integer partition of the total (4 -> 4-0-0-0,
        # 3-1-0-0, 2-2-0-0, 2-1-1-0, 1-1-1-1). The answer is the total: fixed by design, see balance.py.
        "spread": {"total": 4, "n_images": 4},
        # needles all in one image (concentrated) or one instance per image (balanced), plus distractors
        "distractors": {"placements": ["concentrated", "balanced"], "n_distractors": [0, 1, 2, 4, 6], "totals": [2, 3, 4]},
        "concepts": {"n_concepts": [1, 2, 3], "n_images": 4},
        "n_images": {"values": [1, 2, 4, 6, 8, 10], "max_total": 8},
    },
    "listing": {
        "n_subcategories": {"values": [1, 2, 3, 4], "n_images": 4},
        # the present sub-categories are drawn first (1..max_subcategories of them), then images to match
        "distractors": {"n_distractors": [0, 1, 2, 4, 6], "n_needle_images": 2, "max_subcategories": 4},
        "n_images": {"values": [1, 2, 4, 6, 8, 10], "max_subcategories": 4},
    },
    "common": {"n_images": {"values": [1, 2, 4, 6, 8, 10]}},
    # Odd-One needs a minority and a majority, so at least 3 images
    "odd_one": {"n_images": {"values": [3, 4, 6, 8, 10], "majority_children": [1, 2]}},
}  # fmt: skip

DEFAULT_TRAIN_MIX = {"counting": 0.4, "listing": 0.2, "common": 0.2, "odd_one": 0.2}


@dataclass(frozen=True)
class Cell:
    """One (task, study, axis value): the unit items are generated, balanced and reported by."""

    task: str
    axis: str
    values: tuple[tuple[str, object], ...]  # axis value columns, e.g. (("placement", "balanced"), ("n_distractors", 2))
    index: int  # position among the task's cells (report order)

    @property
    def axis_value(self) -> str:
        """The value(s) this study varies, e.g. "2-1-1-0" or "balanced/4" (a fixed n_images is context)."""
        varying = [v for k, v in self.values if not (k == "n_images" and self.axis != "n_images")]
        return "/".join(str(v) for v in varying)

    def get(self, name: str, default=None):
        return dict(self.values).get(name, default)


def partitions(total: int, max_parts: int) -> list[tuple[int, ...]]:
    """Integer partitions of `total` into at most `max_parts` parts, largest first, padded with zeros."""
    out: list[tuple[int, ...]] = []

    def rec(remaining: int, largest: int, parts: list[int]) -> None:
        if remaining == 0:
            out.append(tuple(parts + [0] * (max_parts - len(parts))))
            return
        if len(parts) == max_parts:
            return
        for k in range(min(remaining, largest), 0, -1):
            rec(remaining - k, k, parts + [k])

    rec(total, total, [])
    return out


@dataclass(frozen=True)
class BenchmarkConfig:
    seed: int = 0
    items_per_cell: int = 100
    studies: dict | None = None  # None: DEFAULT_STUDIES
    tasks: tuple[str, ...] = TASKS

    def study_settings(self) -> dict[str, dict[str, dict]]:
        return copy.deepcopy(self.studies if self.studies is not None else DEFAULT_STUDIES)

    def to_dict(self) -> dict:
        return {"seed": self.seed, "items_per_cell": self.items_per_cell, "studies": self.study_settings(),
                "tasks": list(self.tasks), "generator_version": GENERATOR_VERSION}  # fmt: skip

    @cached_property
    def hash(self) -> str:
        return config_hash(self.to_dict())

    def cells(self, task: str) -> list[Cell]:
        """Every cell of `task`, in a stable order."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
        cells: list[tuple[str, tuple]] = []
        for axis, s in self.study_settings().get(task, {}).items():
            if task == "counting" and axis == "spread":
                cells += [(axis, (("spread", "-".join(map(str, p))), ("n_images", s["n_images"])))
                          for p in partitions(s["total"], s["n_images"])]  # fmt: skip
            elif axis == "distractors" and task == "counting":
                cells += [(axis, (("placement", pl), ("n_distractors", d)))
                          for pl, d in itertools.product(s["placements"], s["n_distractors"])]  # fmt: skip
            elif axis == "distractors":
                cells += [(axis, (("n_distractors", d),)) for d in s["n_distractors"]]
            elif axis == "concepts":
                cells += [(axis, (("n_concepts", q), ("n_images", s["n_images"]))) for q in s["n_concepts"]]
            elif axis == "n_subcategories":
                cells += [(axis, (("n_subcategories", k), ("n_images", s["n_images"]))) for k in s["values"]]
            elif axis == "n_images":
                cells += [(axis, (("n_images", n),)) for n in s["values"]]
            else:
                raise ValueError(f"unknown study {task}/{axis}; see DEFAULT_STUDIES for the known ones")
        return [Cell(task, axis, values, i) for i, (axis, values) in enumerate(cells)]

    def settings(self, task: str, axis: str) -> dict:
        return self.study_settings()[task][axis]  # a copy: samplers may not change the config


def items_per_task(total: int, mix: dict[str, float]) -> dict[str, int]:
    """Split `total` items over tasks by `mix`, exactly (largest remainders get the leftover items)."""
    weight = sum(mix.values())
    if weight <= 0 or any(v < 0 for v in mix.values()):
        raise ValueError(f"task mix must have non-negative weights with a positive sum, got {mix}")
    raw = {t: total * w / weight for t, w in mix.items()}
    out = {t: int(v) for t, v in raw.items()}
    for t in sorted(raw, key=lambda t: (out[t] - raw[t], t))[: total - sum(out.values())]:
        out[t] += 1
    return out


def spread_items(total: int, n: int) -> list[int]:
    """`total` split into `n` near-equal integers, largest first (e.g. 7 over 3 -> [3, 2, 2])."""
    base, extra = divmod(total, n)
    return [base + 1] * extra + [base] * (n - extra)
