"""lmms-eval task functions for the MIMIC benchmark (written as utils.py by `mimic export lmms-eval`).

The scoring is the MIMIC pipeline's own, not a re-implementation: the package `mimic_scoring/` beside this
file holds verbatim copies of `mimic_pipeline/core/scoring.py` and `core/text.py` taken at export time, so
lmms-eval users need not install mimic_pipeline. This file only adapts lmms-eval's calls to it.

Metrics, in percent, each a mean over the task's studies (axes) of the study's score, as the MIMIC
leaderboard computes them: `mimic_score` is the leaderboard's task column (accuracy; mean per-item F1 for
Listing) and the group `mimic` averages it into the MIMIC average; `accuracy` (Counting, Common, Odd-One),
`mean_item_f1` and `exact_set_accuracy` (Listing) name the same or the companion numbers explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import sys
from collections import defaultdict
from pathlib import Path

# the metrics each task reports; the exported YAML lists the same (it is written from this table)
METRICS = {
    "counting": ("mimic_score", "accuracy"),
    "listing": ("mimic_score", "mean_item_f1", "exact_set_accuracy"),
    "common": ("mimic_score", "accuracy"),
    "odd_one": ("mimic_score", "accuracy"),
}
# the leaderboard's score of a task (sql/evaluation.sql, view `leaderboard`)
TASK_SCORE = {"counting": "accuracy", "listing": "mean_item_f1", "common": "accuracy", "odd_one": "accuracy"}

_HERE = Path(__file__).resolve().parent
_SCORING = None


def scoring():
    """The vendored `mimic_scoring.scoring` beside this file, loaded once per process and export folder.

    lmms-eval executes this file by path (not as part of a package), so the package is loaded by path too,
    under a name unique to this folder: two exports of different versions never share a module.
    """
    global _SCORING
    if _SCORING is None:
        name = "_mimic_scoring_" + hashlib.sha256(str(_HERE).encode()).hexdigest()[:12]
        if name not in sys.modules:
            package = _HERE / "mimic_scoring"
            spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                          submodule_search_locations=[str(package)])  # fmt: skip
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        _SCORING = importlib.import_module(f"{name}.scoring")
    return _SCORING


def mimic_doc_to_visual(doc):
    """The item's images, in the order the question refers to them."""
    return [image.convert("RGB") for image in doc["images"]]


def mimic_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def mimic_doc_to_target(doc):
    return doc["gt"]


def score_item(doc, prediction):
    """The pipeline's `score_answer` on one exported item: the same fields, the same vocabulary."""
    item = {"answer": doc["gt"], "answer_struct": doc["answer_struct"], "query": doc["query"]}
    return scoring().score_answer(doc["task"], prediction, item, doc["vocabulary"])


def mimic_process_results(doc, results):
    """One record per metric of the task: the item's study and its score (all fields of `ItemScore`)."""
    prediction = results[0] if results else ""
    record = {"task": doc["task"], "axis": doc["axis"], "item_id": doc["item_id"], "prediction": prediction,
              **dataclasses.asdict(score_item(doc, prediction))}  # fmt: skip
    return {metric: record for metric in METRICS[doc["task"]]}


def _study_mean(records, metric_of_task) -> float:
    """100 x the mean over studies of `aggregate(task, study's scores)[metric]`; NaN without records."""
    module = scoring()
    fields = [f.name for f in dataclasses.fields(module.ItemScore)]
    by_study = defaultdict(list)
    for r in records:
        by_study[(r["task"], r["axis"])].append(module.ItemScore(**{k: r[k] for k in fields}))
    values = [module.aggregate(task, scores)[metric_of_task(task)] for (task, _), scores in sorted(by_study.items())]
    return 100 * sum(values) / len(values) if values else math.nan


def mimic_aggregate_score(results) -> float:
    return _study_mean(results, TASK_SCORE.__getitem__)


def mimic_aggregate_accuracy(results) -> float:
    return _study_mean(results, lambda task: "accuracy")


def mimic_aggregate_mean_item_f1(results) -> float:
    return _study_mean(results, lambda task: "mean_item_f1")


def mimic_aggregate_exact_set_accuracy(results) -> float:
    return _study_mean(results, lambda task: "exact_set_accuracy")


AGGREGATIONS = {
    "mimic_score": mimic_aggregate_score,
    "accuracy": mimic_aggregate_accuracy,
    "mean_item_f1": mimic_aggregate_mean_item_f1,
    "exact_set_accuracy": mimic_aggregate_exact_set_accuracy,
}
