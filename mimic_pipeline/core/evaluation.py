"""Scoring shared by every answerer, checkpoints and reference baselines alike.

`score_predictions` turns raw answers into one row per item with the scorer's verdict;
`metric_rows` aggregates them per (checkpoint, variant, task, study, axis value) with intervals.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from . import catalog
from .scoring import aggregate, score_answer

PREDICTION_SCHEMA = pa.schema([
    ("checkpoint", pa.string()), ("variant", pa.string()), ("item_id", pa.string()), ("task", pa.string()),
    ("axis", pa.string()), ("axis_value", pa.string()), ("raw_answer", pa.string()), ("parsed", pa.string()),
    ("score", pa.float64()), ("correct", pa.bool_()), ("parse_ok", pa.bool_()), ("precision", pa.float64()),
    ("recall", pa.float64()), ("n_pred", pa.int32()), ("n_gold", pa.int32()), ("n_hit", pa.int32()),
    ("seconds", pa.float64()),
])  # fmt: skip

METRIC_KEYS = {
    "counting": ["accuracy"], "common": ["accuracy"], "odd_one": ["accuracy"], "presence": ["accuracy"],
    "listing": ["accuracy", "micro_precision", "micro_recall", "micro_f1", "mean_item_f1"],
}  # fmt: skip


def source_vocabulary(catalog_file: str | Path, items: pa.Table) -> list[str] | None:
    """The category names of the items' source in the catalogue, sorted, or None without a catalogue.

    Scoring takes them as `vocabulary`: a Common / Odd-One answer naming a second category is wrong.
    """
    source = items.column("source")[0].as_py() if items.num_rows else None
    try:
        _, rows = catalog.query(catalog_file, "select distinct name from categories where source = ? order by name", [source])
    except catalog.CatalogError:
        return None
    return [r[0] for r in rows] or None


def score_predictions(
    items: pa.Table, answers: list[str], checkpoint: str, variant: str = "default",
    seconds: list[float] | None = None, vocabulary=None,
) -> pa.Table:  # fmt: skip
    """One prediction row per item: the raw answer and how the scorer judged it."""
    if len(answers) != items.num_rows:
        raise ValueError(f"{len(answers)} answers for {items.num_rows} items")
    vocabulary = list(vocabulary) if vocabulary is not None else None
    rows = []
    for k, (item, answer) in enumerate(zip(items.to_pylist(), answers)):
        s = score_answer(item["task"], answer, item, vocabulary)
        rows.append({
            "checkpoint": checkpoint, "variant": variant, "item_id": item["item_id"], "task": item["task"],
            "axis": item["axis"], "axis_value": item["axis_value"], "raw_answer": answer, "parsed": s.parsed,
            "score": s.score, "correct": s.correct, "parse_ok": s.parse_ok, "precision": s.precision,
            "recall": s.recall, "n_pred": s.n_pred, "n_gold": s.n_gold, "n_hit": s.n_hit,
            "seconds": seconds[k] if seconds is not None else None,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def metric_rows(predictions: pa.Table) -> list[dict]:
    """Metrics per (checkpoint, variant, task, axis, axis_value), and per study over all its values ("all")."""
    from .scoring import ItemScore

    groups: dict[tuple, list[ItemScore]] = defaultdict(list)
    for r in predictions.to_pylist():
        score = ItemScore(r["score"], r["correct"], r["parsed"], r["parse_ok"], r["precision"], r["recall"],
                          r["n_pred"], r["n_gold"], r["n_hit"])  # fmt: skip
        for value in (r["axis_value"], "all"):
            groups[(r["checkpoint"], r["variant"], r["task"], r["axis"], value)].append(score)
    rows = []
    for (checkpoint, variant, task, axis, value), scores in sorted(groups.items()):
        agg = aggregate(task, scores)
        for metric in METRIC_KEYS[task]:
            low, high = (agg["f1_ci_low"], agg["f1_ci_high"]) if metric == "mean_item_f1" else (
                (agg["ci_low"], agg["ci_high"]) if metric == "accuracy" else (None, None))  # fmt: skip
            rows.append({"checkpoint": checkpoint, "variant": variant, "task": task, "axis": axis, "axis_value": value,
                         "metric": metric, "value": agg[metric], "n": agg["n"], "ci_low": low, "ci_high": high,
                         "unparseable": agg["unparseable"]})  # fmt: skip
    return rows
