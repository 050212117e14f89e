"""The answer-distribution report: can a task be solved by always giving its most common answer?

Rule (MIMIC.md section 3): per (task, study), the majority answer's share must stay within
1/k + 10 points, k being the number of distinct answers. A set is judged by what it shows beyond
chance: it fails when even the lower end of the 95% Wilson interval of the majority share is over
the limit (a 24-item demo set can show 21% for one of 10 answers by luck; 600 items cannot).
A study with a single answer always fails (always giving it is always right), unless its answer is
fixed by design: studies whose answer is fixed by design (counting/spread: the total is the same in every pattern)
cannot meet it and are reported as such.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from ..scoring import wilson_interval

SLACK = 0.10
FIXED_BY_DESIGN = {("counting", "spread")}
# single-image questions are training material whose answer mix is set by design (yes/no halves, counts
# as the images have them); they are reported, not held to the benchmark rule
REPORT_ONLY_AXES = {"single_image"}


def answer_balance(items: pa.Table) -> list[dict]:
    """One row per (task, axis): n, k, majority answer and share, the limit, and whether it holds."""
    groups: dict[tuple[str, str], Counter] = {}
    for task, axis, answer in zip(items.column("task").to_pylist(), items.column("axis").to_pylist(),
                                  items.column("answer").to_pylist()):  # fmt: skip
        groups.setdefault((task, axis), Counter())[answer] += 1
    rows = []
    for (task, axis), counter in sorted(groups.items()):
        n, k = sum(counter.values()), len(counter)
        answer, top = min(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        limit = 1 / k + SLACK
        low, _ = wilson_interval(top, n)
        fixed = (task, axis) in FIXED_BY_DESIGN or axis in REPORT_ONLY_AXES
        rows.append({"task": task, "axis": axis, "n": n, "distinct_answers": k, "majority_answer": answer,
                     "majority_share": round(top / n, 4), "share_ci_low": round(low, 4), "limit": round(min(limit, 1.0), 4),
                     "ok": fixed or (k > 1 and low <= limit), "fixed_by_design": fixed})  # fmt: skip
    return rows
