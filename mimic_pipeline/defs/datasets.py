"""Stage `datasets`: MIMIC eval sets and the procedural training set, per task, plus baseline scores."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from ..core import catalog
from ..core.baselines import BASELINES, baseline_answerer
from ..core.evaluation import PREDICTION_SCHEMA, metric_rows, source_vocabulary
from ..core.files import config_hash, file_fingerprints
from ..core.prediction import evaluate
from ..core.sampling.balance import answer_balance
from ..core.sampling.config import DEFAULT_TRAIN_MIX, GENERATOR_VERSION, BenchmarkConfig, items_per_task
from ..core.sampling.generate import cell_sizes, generate_task
from ..core.sampling.items import ITEM_SCHEMA, write_items, write_llava_json
from ..core.sampling.pools import SamplingError, SamplingIndex, sampling_index_from_parquet
from ..core.sampling.single_image import DEFAULT_SINGLE_IMAGE_MIX, generate_single_image
from ..core.tables import markdown_table
from .annotations import annotation_index
from .metadata import table_metadata
from .partitions import task_partitions
from .resources import AnnotationSources, MimicPaths

GROUP = "datasets"
OWNERS = ["team:mimic"]
ITEM_COLUMNS = {
    "item_id": "purpose.task.study.value.number", "axis": "the study this item belongs to",
    "axis_value": "the study's value for this item (the cell)", "query": "queried class names, or the parent",
    "image_roles": "needle (holds what is asked about) or distractor, per image",
    "answer_struct": "JSON: per-image counts or category lists behind the answer",
    "config_hash": "hash of the benchmark config (studies, sizes, seed)",
}  # fmt: skip


class BenchmarkSettings(dg.Config):
    """Which index the items come from and how the benchmark is sized (MIMIC.md section 3)."""

    source: str = "shapes"
    seed: int = 0
    studies_json: str = ""  # JSON object overriding the default studies (see core/sampling/config.py)

    def benchmark(self, items_per_cell: int = 100) -> BenchmarkConfig:
        studies = json.loads(self.studies_json) if self.studies_json else None
        return BenchmarkConfig(seed=self.seed, items_per_cell=items_per_cell, studies=studies)


class EvalSetSettings(BenchmarkSettings):
    split: str = "eval"
    items_per_cell: int = 100


class TrainSetSettings(BenchmarkSettings):
    split: str = "train"
    total_items: int = 198_000
    mix_json: str = json.dumps(DEFAULT_TRAIN_MIX)  # task -> share of the training items


def _load_index(context, paths: MimicPaths, source: str, split: str) -> SamplingIndex:
    started = time.perf_counter()
    try:
        index = sampling_index_from_parquet(paths.index_dir(source), source, split)
    except SamplingError as e:
        raise dg.Failure(description=str(e)) from e
    context.log.info(f"{source}/{split}: {index.n_images} images, {len(index.names)} categories, "
                     f"{len(index.children_of)} parents loaded in {time.perf_counter() - started:.1f}s")  # fmt: skip
    return index


def _progress(context):
    started = time.perf_counter()

    def log(task: str, done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        context.log.info(f"{task}: {done}/{total} items ({rate:.0f} items/s)")

    return log


def _item_checks(paths: MimicPaths, path, tasks: list[str], table: pa.Table, extra: list[dg.AssetCheckResult] = ()) -> list:
    """Validity (answers re-derived in SQL from the catalogue) and the answer-balance rule."""
    failures = catalog.item_check_failures(paths.catalog, path, ["repeated_images"])
    for task in tasks:
        failures |= catalog.item_check_failures(paths.catalog, path, [task], task=task)
    bad = {name: rows for name, (cols, rows) in failures.items() if rows}
    examples = "\n\n".join(f"**{name}**\n\n" + markdown_table(failures[name][0], rows[:5]) for name, rows in bad.items())
    balance = answer_balance(table)
    unbalanced = [r for r in balance if not r["ok"]]
    return [
        dg.AssetCheckResult(check_name="answers_rederived", passed=not bad,
                            metadata={"invalid_items": sum(len(r) for r in bad.values()), "examples": dg.MetadataValue.md(examples or "none")}),
        dg.AssetCheckResult(check_name="answer_balance", passed=not unbalanced,
                            metadata={"report": dg.MetadataValue.md(markdown_table(list(balance[0]), [tuple(r.values()) for r in balance]))}),
        *extra,
    ]  # fmt: skip


def _publish(paths: MimicPaths, table: pa.Table, final: Path, tasks: list[str], extra=lambda staged: []):
    """Write the items to a staging file, run the checks on it, and only then move it into place.

    A set that fails a blocking check never replaces the last good one: the run fails with the
    check's findings and the views keep reading the previous file. Returns (path, check results).
    """
    staged = write_items(table, paths.datasets / "staging" / f"{final.parent.name}-{final.name}")
    try:
        catalog.create_item_views(paths.catalog, paths.datasets)  # views over what is published (for disjointness)
        results = _item_checks(paths, staged, tasks, table, extra(staged))
        failed = [r for r in results if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
        if failed:
            raise dg.Failure(
                description=f"blocking checks failed: {', '.join(r.check_name for r in failed)}; "
                f"{final} keeps the previous items",
                metadata={f"{r.check_name}_{k}": v for r in failed for k, v in r.metadata.items()},
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)
    catalog.create_item_views(paths.catalog, paths.datasets)
    return final, results


def _item_metadata(table: pa.Table, path, seconds: float, cfg: BenchmarkConfig, index: SamplingIndex) -> dict:
    preview_cols = ["item_id", "n_images", "question", "answer"]
    rows = [tuple(r[c] for c in preview_cols) for r in table.slice(0, 8).select(preview_cols).to_pylist()]
    return {
        **table_metadata(row_count=table.num_rows, schema=ITEM_SCHEMA, uri=path, preview=(preview_cols, rows),
                         descriptions=ITEM_COLUMNS),  # fmt: skip
        "items_per_second": round(table.num_rows / max(seconds, 1e-9), 1),
        "seconds": round(seconds, 2),
        "config_hash": cfg.hash,
        "generator_version": GENERATOR_VERSION,
        "source": f"{index.source}/{index.split}",
    }


CHECKS = [("answers_rederived", "every answer re-derived in SQL from the catalogue; distractors hold no queried class; images distinct"),
          ("answer_balance", "no study is solvable by its most common answer beyond 1/k + 10 points (fixed-by-design studies exempt)")]  # fmt: skip


@dg.asset(
    partitions_def=task_partitions,
    deps=[dg.AssetDep(annotation_index, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"}, tags={"stage": "datasets"}, pool="duckdb",
    code_version=GENERATOR_VERSION,
    check_specs=[dg.AssetCheckSpec(n, asset="eval_items", description=d, blocking=True) for n, d in CHECKS],
)  # fmt: skip
def eval_items(context: dg.AssetExecutionContext, config: EvalSetSettings, paths: MimicPaths, sources: AnnotationSources) -> dg.MaterializeResult:
    """MIMIC eval set of one task: `items_per_cell` items for every (study, axis value) cell.

    Drawn from the COCO-format index (the shapes world's eval split by default; real COCO val2017
    with `source: coco, split: val2017`). Every item is re-derived from the index before it is
    written, and again in SQL by the blocking check. Parquet at `datasets/eval/<task>.parquet`,
    queryable as the DuckDB view `eval_items`.
    """
    task = context.partition_key
    cfg = config.benchmark(config.items_per_cell)
    index = _load_index(context, paths, config.source, config.split)
    started = time.perf_counter()
    try:
        table = generate_task(index, task, cfg, "eval", sources.image_root(config.source, config.split, paths),
                              progress=_progress(context))  # fmt: skip
    except SamplingError as e:
        raise dg.Failure(description=str(e)) from e
    seconds = time.perf_counter() - started
    path, checks = _publish(paths, table, paths.datasets / "eval" / f"{task}.parquet", [task])
    return dg.MaterializeResult(
        metadata={**_item_metadata(table, path, seconds, cfg, index), "cells": len(cfg.cells(task))},
        check_results=checks,
        data_version=dg.DataVersion(config_hash({"cfg": cfg.hash, "task": task, "source": config.source, "split": config.split})),
    )


@dg.asset(
    partitions_def=task_partitions,
    deps=[dg.AssetDep(annotation_index, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb", "json"}, tags={"stage": "datasets"}, pool="duckdb",
    code_version=GENERATOR_VERSION,
    check_specs=[*(dg.AssetCheckSpec(n, asset="train_items", description=d, blocking=True) for n, d in CHECKS),
                 dg.AssetCheckSpec("disjoint_from_eval", asset="train_items", blocking=True,
                                   description="no training image is used by any eval item")],
)  # fmt: skip
def train_items(context: dg.AssetExecutionContext, config: TrainSetSettings, paths: MimicPaths, sources: AnnotationSources) -> dg.MaterializeResult:
    """Procedural multi-image training set, this task's share of `total_items` (198K by default).

    Drawn from the OpenImages-format index (the shapes world's train split by default), up to 10
    images per item, with the same studies and validity rules as the eval sets. Written as Parquet
    (`datasets/train/<task>.parquet`, DuckDB view `train_items`) and in the LLaVA conversation
    format a trainer reads (`datasets/llava/<task>.json`: image list + human/assistant turns).
    """
    task = context.partition_key
    cfg = config.benchmark()
    n_items = items_per_task(config.total_items, json.loads(config.mix_json)).get(task, 0)
    index = _load_index(context, paths, config.source, config.split)
    started = time.perf_counter()
    try:
        table = generate_task(index, task, cfg, "train", sources.image_root(config.source, config.split, paths),
                              sizes=cell_sizes(cfg.cells(task), n_items), progress=_progress(context))  # fmt: skip
    except SamplingError as e:
        raise dg.Failure(description=str(e)) from e
    seconds = time.perf_counter() - started
    path, checks = _publish(paths, table, paths.datasets / "train" / f"{task}.parquet", [task],
                            extra=lambda staged: [_disjoint_from_eval(paths, staged)])  # fmt: skip
    llava = write_llava_json(table, paths.datasets / "llava" / f"{task}.json")
    return dg.MaterializeResult(
        metadata={**_item_metadata(table, path, seconds, cfg, index), "llava_json": dg.MetadataValue.path(str(llava))},
        check_results=checks,
        data_version=dg.DataVersion(config_hash({"cfg": cfg.hash, "task": task, "n": n_items, "source": config.source})),
    )


def _disjoint_from_eval(paths: MimicPaths, staged: Path) -> dg.AssetCheckResult:
    if not any((paths.datasets / "eval").glob("*.parquet")):
        return dg.AssetCheckResult(check_name="disjoint_from_eval", passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description="no eval items yet: materialize eval_items, then this check again")  # fmt: skip
    cols, overlap = catalog.item_check_failures(paths.catalog, staged, ["train_eval_overlap"])["train_eval_overlap"]
    return dg.AssetCheckResult(check_name="disjoint_from_eval", passed=not overlap,
                               metadata={"shared_images": dg.MetadataValue.md(markdown_table(cols, overlap) if overlap else "none")})  # fmt: skip


class SingleImageSettings(dg.Config):
    source: str = "shapes"
    split: str = "train"
    seed: int = 0
    n_items: int = 60_000
    mix_json: str = json.dumps(DEFAULT_SINGLE_IMAGE_MIX)  # question kind -> share


@dg.asset(
    deps=[dg.AssetDep(annotation_index, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb", "json"}, tags={"stage": "datasets"}, pool="duckdb",
    code_version=GENERATOR_VERSION,
    check_specs=[dg.AssetCheckSpec(n, asset="single_image_items", description=d, blocking=True) for n, d in CHECKS],
)  # fmt: skip
def single_image_items(context: dg.AssetExecutionContext, config: SingleImageSettings, paths: MimicPaths, sources: AnnotationSources) -> dg.MaterializeResult:
    """Single-image instruction set for training the tiny base model: counting (0 included),
    yes/no presence and listing questions about one image of the training split.

    Parquet at `datasets/single_image/items.parquet` (view `single_image_items`), LLaVA form at
    `datasets/llava/single_image.json`.
    """
    index = _load_index(context, paths, config.source, config.split)
    mix = json.loads(config.mix_json)
    chash = config_hash({"single_image": config.model_dump(), "generator": GENERATOR_VERSION})
    started = time.perf_counter()
    try:
        table = generate_single_image(index, config.n_items, config.seed, sources.image_root(config.source, config.split, paths),
                                      mix, chash)  # fmt: skip
    except SamplingError as e:
        raise dg.Failure(description=str(e)) from e
    seconds = time.perf_counter() - started
    path, checks = _publish(paths, table, paths.datasets / "single_image" / "items.parquet", sorted(mix))
    llava = write_llava_json(table, paths.datasets / "llava" / "single_image.json")
    return dg.MaterializeResult(
        metadata={**table_metadata(row_count=table.num_rows, schema=ITEM_SCHEMA, uri=path, descriptions=ITEM_COLUMNS,
                                   preview=(["item_id", "question", "answer"],
                                            [(r["item_id"], r["question"], r["answer"]) for r in table.slice(0, 8).to_pylist()])),
                  "items_per_second": round(table.num_rows / max(seconds, 1e-9), 1), "seconds": round(seconds, 2),
                  "llava_json": dg.MetadataValue.path(str(llava)), "source": f"{index.source}/{index.split}"},
        check_results=checks,
        data_version=dg.DataVersion(chash),
    )  # fmt: skip


@dg.asset(
    partitions_def=task_partitions,
    deps=[eval_items],
    group_name=GROUP, owners=OWNERS, kinds={"parquet", "duckdb"}, tags={"stage": "datasets"}, pool="duckdb",
    code_version=GENERATOR_VERSION,
    check_specs=[dg.AssetCheckSpec("oracle_scores_100", asset="baseline_scores", blocking=True,
                                   description="the oracle (answers from the index) is right on every item: generator and scorer agree")],
)  # fmt: skip
def baseline_scores(context: dg.AssetExecutionContext, config: EvalSetSettings, paths: MimicPaths) -> dg.MaterializeResult:
    """Reference baselines on one task's eval set, through the same prediction and scoring path as
    checkpoints (`core.prediction.evaluate`, variant `default`).

    `oracle` answers from the annotation index in varied phrasings (must score 100), `majority`
    gives the most common answer of the study, `random` a random one of its answers. Predictions at
    `predictions/<baseline>/<task>.parquet` (view `predictions`), metrics in the DuckDB table
    `eval_metrics` (view `leaderboard`).
    """
    task = context.partition_key
    path = paths.datasets / "eval" / f"{task}.parquet"
    items = pq.read_table(path)
    index = _load_index(context, paths, items.column("source")[0].as_py(), items.column("split")[0].as_py())
    version = config_hash({"items": file_fingerprints({"items": path}), "seed": config.seed})
    vocabulary = source_vocabulary(paths.catalog, items)  # the names checkpoints are scored with
    tables = [evaluate({"default": baseline_answerer(name, items, index, config.seed)}, items, paths.predictions, name,
                       task, vocabulary=vocabulary, items_version=version).table for name in BASELINES]  # fmt: skip
    predictions = pa.concat_tables(tables)
    metrics = pa.Table.from_pylist(metric_rows(predictions))
    for name in BASELINES:
        catalog.replace_rows(paths.catalog, "eval_metrics", {"checkpoint": name, "task": task},
                             metrics.filter(pa.compute.equal(metrics["checkpoint"], name)))  # fmt: skip
    catalog.create_parquet_views(paths.catalog, "prediction_views", paths.predictions)
    oracle_wrong = [r for r in tables[0].to_pylist() if not r["correct"]]
    cols, summary = catalog.query(paths.catalog, catalog.named_queries("evaluation")["baseline_summary"], {"task": task})
    # one stable numeric key per baseline, so the UI plots it across materializations
    accuracy = {f"{t.column('checkpoint')[0].as_py()}_accuracy": round(100 * pa.compute.mean(t.column("correct").cast(pa.float64())).as_py(), 2)
                for t in tables}  # fmt: skip
    return dg.MaterializeResult(
        metadata={**table_metadata(row_count=predictions.num_rows, schema=PREDICTION_SCHEMA, uri=paths.predictions,
                                   preview=(cols, summary)), **accuracy},  # fmt: skip
        check_results=[dg.AssetCheckResult(
            check_name="oracle_scores_100", passed=not oracle_wrong,
            metadata={"wrong_items": len(oracle_wrong),
                      "examples": dg.MetadataValue.md(markdown_table(["item_id", "raw_answer", "parsed"],
                                                                     [(r["item_id"], r["raw_answer"], r["parsed"]) for r in oracle_wrong[:5]]))},
        )],  # fmt: skip
    )
