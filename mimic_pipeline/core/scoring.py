"""Scoring of model answers against MIMIC items, and per-task aggregates with confidence intervals.

`score_answer` is the one entry point for a single answer; `aggregate` turns a list of its results into
the numbers a report shows. The reference code got Listing wrong (it dropped the first listed item) and
matched names as substrings ("car" in "carrot"); here names are compared as normalized token sequences
(`text.normalize_phrase`), the same normalization on both sides.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .text import normalize_phrase, parse_count

TASKS = ("counting", "listing", "common", "odd_one", "presence")  # presence: the single-image yes/no questions
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed so that a report is reproducible byte for byte


@dataclass(frozen=True)
class ItemScore:
    """The score of one answer.

    `score` is 0/1, or the item's F1 for Listing; `correct` is exact (the whole set for Listing).
    `parsed` is what was read from the answer, normalized (None when nothing could be read). The counts
    `n_pred`, `n_gold`, `n_hit` let `aggregate` compute micro averages for Listing; they are 0 elsewhere.
    """

    score: float
    correct: bool
    parsed: str | None
    parse_ok: bool
    precision: float | None = None
    recall: float | None = None
    n_pred: int = 0
    n_gold: int = 0
    n_hit: int = 0


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def score_answer(
    task: str, answer_text: str | None, item: Mapping, vocabulary: Iterable[str] | None = None
) -> ItemScore:
    """Score `answer_text` for `item` (fields `answer`, `answer_struct`, `query`).

    `vocabulary`, all category names of the item's source, makes Common / Odd-One answers that name a
    second category wrong, and keeps Listing from splitting names that contain "and" ("Bow and arrow").
    """
    _check_task(task)
    text = answer_text or ""
    if task == "counting":
        return _score_counting(text, item)
    if task == "listing":
        return _score_listing(text, item, vocabulary or ())
    if task == "presence":
        return _score_yes_no(text, item)
    return _score_name(text, item, vocabulary or ())


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def _score_yes_no(text: str, item: Mapping) -> ItemScore:
    """The first standalone "yes" or "no" is the answer ("No, there is none." -> no)."""
    match = _YES_NO.search(text)
    if match is None:
        return ItemScore(score=0.0, correct=False, parsed=None, parse_ok=False)
    parsed = match[1].lower()
    correct = parsed == item["answer"]
    return ItemScore(score=float(correct), correct=correct, parsed=parsed, parse_ok=True)


def _score_counting(text: str, item: Mapping) -> ItemScore:
    count = parse_count(text)
    if count is None:
        return ItemScore(score=0.0, correct=False, parsed=None, parse_ok=False)
    correct = count == int(item["answer"])
    return ItemScore(score=float(correct), correct=correct, parsed=str(count), parse_ok=True)


def _prf(n_hit: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of a set prediction; two empty sets agree perfectly."""
    if n_pred == 0 and n_gold == 0:
        return 1.0, 1.0, 1.0
    precision = n_hit / n_pred if n_pred else 0.0
    recall = n_hit / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# A list separator, kept by re.split (capturing group) so that "and" can be told from a comma.
_SEPARATOR = re.compile(r"([,;\n]|\band\b)", re.IGNORECASE)


def _split_list(text: str, known: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The normalized names in a listed answer, in order, without empties or duplicates.

    A piece split at "and" is joined back to its predecessor when the two together form a known name
    ("salt and pepper shakers"), so that such names survive splitting.
    """
    parts = _SEPARATOR.split(text)
    pieces = [parts[0]]
    for separator, part in zip(parts[1::2], parts[2::2]):
        joined = f"{pieces[-1]} {separator} {part}"
        if separator.lower() == "and" and normalize_phrase(joined) in known:
            pieces[-1] = joined
        else:
            pieces.append(part)
    names = [normalize_phrase(piece) for piece in pieces]
    return list(dict.fromkeys(name for name in names if name))


def _score_listing(text: str, item: Mapping, vocabulary: Iterable[str]) -> ItemScore:
    struct = item["answer_struct"]
    struct = json.loads(struct) if isinstance(struct, str) else struct
    gold = {normalize_phrase(name) for name in struct["categories"]}
    predicted = _split_list(text, gold | {normalize_phrase(name) for name in vocabulary})
    n_hit = len(gold.intersection(predicted))
    precision, recall, f1 = _prf(n_hit, len(predicted), len(gold))
    return ItemScore(
        score=f1,
        correct=set(predicted) == gold,
        parsed=", ".join(" ".join(name) for name in predicted) or None,
        parse_ok=bool(predicted),
        precision=precision,
        recall=recall,
        n_pred=len(predicted),
        n_gold=len(gold),
        n_hit=n_hit,
    )


def _spans(needle: tuple[str, ...], haystack: tuple[str, ...]) -> list[tuple[int, int]]:
    """Every (start, end) at which the token sequence `needle` occurs in `haystack`."""
    n = len(needle)
    return [(i, i + n) for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle]


def _score_name(text: str, item: Mapping, vocabulary: Iterable[str]) -> ItemScore:
    """Common / Odd-One: the gold name must occur as whole words, and no other category may be named.

    Another vocabulary name counts only where it is not inside an occurrence of the gold name (gold
    "wine glass" also contains the name "glass"), and the queried names (the parent category, which a model
    may echo from the question) never count.
    """
    predicted = normalize_phrase(text)
    if not predicted:
        return ItemScore(score=0.0, correct=False, parsed=None, parse_ok=False)
    gold = normalize_phrase(item["answer"])
    gold_spans = _spans(gold, predicted)
    allowed = {gold} | {normalize_phrase(name) for name in item.get("query") or ()}
    others = {normalize_phrase(name) for name in vocabulary} - allowed - {()}
    hedged = any(
        not any(g_start <= start and end <= g_end for g_start, g_end in gold_spans)
        for other in others
        for start, end in _spans(other, predicted)
    )
    correct = bool(gold_spans) and not hedged
    return ItemScore(score=float(correct), correct=correct, parsed=" ".join(predicted), parse_ok=True)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when there is no data.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n, which small
    report cells (one axis value of one checkpoint) often are.
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap_mean_interval(values: list[float]) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (F1 is not binomial, so Wilson does not apply)."""
    if not values:
        return 0.0, 1.0
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = data[rng.integers(0, len(data), size=(BOOTSTRAP_RESAMPLES, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def aggregate(task: str, scores: list[ItemScore]) -> dict:
    """Accuracy with its Wilson interval, n and the number of unparseable answers; for Listing also micro
    precision / recall / F1 (over all items' names pooled), mean item F1 with a bootstrap interval and
    exact-set accuracy (which is also `accuracy`). Rates over no items are NaN, not 0: there is no data.
    """
    _check_task(task)
    n = len(scores)
    successes = sum(s.correct for s in scores)
    ci_low, ci_high = wilson_interval(successes, n)
    result = {
        "accuracy": successes / n if n else math.nan,
        "n": n,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "unparseable": sum(not s.parse_ok for s in scores),
    }
    if task != "listing":
        return result
    if n:
        micro = _prf(sum(s.n_hit for s in scores), sum(s.n_pred for s in scores), sum(s.n_gold for s in scores))
    else:
        micro = (math.nan, math.nan, math.nan)
    f1_low, f1_high = _bootstrap_mean_interval([s.score for s in scores])
    return result | {
        "micro_precision": micro[0],
        "micro_recall": micro[1],
        "micro_f1": micro[2],
        "mean_item_f1": sum(s.score for s in scores) / n if n else math.nan,
        "exact_set_accuracy": result["accuracy"],
        "f1_ci_low": f1_low,
        "f1_ci_high": f1_high,
    }
