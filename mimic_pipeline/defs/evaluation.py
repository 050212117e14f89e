"""Stage `evaluation`: every checkpoint answers every eval set, per variant; metrics land in DuckDB.

`predictions` is partitioned by checkpoint x task. A checkpoint enters the `checkpoint` partition
set when a training asset writes it or when `checkpoint_sensor` finds a complete folder (DONE) that
a user copied in; the automation condition then materializes its missing partitions once the eval
sets' blocking checks have passed. Predictions hold no DuckDB slot (minutes of generation, files
only); `eval_metrics` turns them into rows of the DuckDB table of that name in the `duckdb` pool.
"""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import catalog
from ..core.errors import InputFileError
from ..core.evaluation import PREDICTION_SCHEMA, metric_rows, source_vocabulary
from ..core.files import config_hash, file_fingerprints
from ..core.models.sequence import Variant
from ..core.prediction import evaluate, model_answerer
from ..core.reports import variant_plot
from ..core.tables import markdown_table
from ..core.training.checkpoints import CheckpointError, complete_checkpoints, validate_checkpoint
from ..core.training.data import ImageCache
from .datasets import baseline_scores, eval_items
from .metadata import catalog_schema, image_markdown, study_plots, table_metadata
from .partitions import checkpoint_partitions, task_partitions
from .resources import MimicPaths
from .training import checkpoints

GROUP = "evaluation"
OWNERS = ["team:mimic"]
EVALUATION_VERSION = "evaluation/1"

evaluation_partitions = dg.MultiPartitionsDefinition({"checkpoint": checkpoint_partitions, "task": task_partitions})


class EvaluationSettings(dg.Config):
    """Which sequence-length variants run and how (MIMIC.md section 3, sequence length)."""

    variants: list[str] = ["pool1", "pool4", "pixels4"]  # poolK, pixelsK, ...-stitch
    batch_size: int = 32
    max_new_tokens: int = 16  # the longest answer (four names of a Listing) is 8 tokens
    items_per_cell: int = 0  # answer only the first N items of every cell (0: all), for quick looks
    device: str = "auto"  # auto: CUDA where a GPU is visible, else the CPU
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU


def _items(paths: MimicPaths, task: str, per_cell: int) -> tuple[pa.Table, str]:
    path = paths.datasets / "eval" / f"{task}.parquet"
    if not path.exists():
        raise dg.Failure(f"{path} is missing: materialize eval_items[{task}] first")
    table = pq.read_table(path)
    if per_cell:
        keep, seen = [], {}
        for i, cell in enumerate(zip(table.column("axis").to_pylist(), table.column("axis_value").to_pylist())):
            seen[cell] = seen.get(cell, 0) + 1
            if seen[cell] <= per_cell:
                keep.append(i)
        table = table.take(keep)
    return table, config_hash({"file": file_fingerprints({"items": path}), "per_cell": per_cell})


@dg.asset(
    partitions_def=evaluation_partitions,
    deps=[eval_items],  # the task dimension maps onto eval_items' task partitions (Dagster infers it)
    group_name=GROUP, owners=OWNERS, kinds={"pytorch", "parquet"}, tags={"stage": "evaluation"},
    code_version=EVALUATION_VERSION,
    automation_condition=dg.AutomationCondition.on_missing() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)  # fmt: skip
def predictions(context: dg.AssetExecutionContext, config: EvaluationSettings, paths: MimicPaths) -> dg.MaterializeResult:
    """One checkpoint's answers to one task's eval set, for every configured variant.

    Batched greedy generation; one row per (variant, item) with the raw answer, the scorer's verdict
    and seconds per item. Written in atomic parts under `predictions/<checkpoint>/<variant>/<task>/`,
    so a killed run resumes with only the missing items; assembled at
    `predictions/<checkpoint>/<task>.parquet` (view `predictions`).
    """
    keys = context.partition_key.keys_by_dimension
    name, task = keys["checkpoint"], keys["task"]
    folder = paths.checkpoints / name
    try:
        validate_checkpoint(folder)
        variants = [Variant.parse(v) for v in config.variants]
    except (CheckpointError, ValueError) as e:
        raise dg.Failure(str(e)) from e
    items, version = _items(paths, task, config.items_per_cell)
    from ..core.models.adapters import load_adapter, resolve_device

    try:
        device, dtype = resolve_device(config.device, config.dtype)
    except ValueError as e:
        raise dg.Failure(str(e)) from e
    adapter = load_adapter(folder, dtype=dtype, device=device)
    # a variant the architecture cannot run (pooling on Qwen2-VL) is skipped, so automatic evaluation
    # of a copied-in checkpoint still answers every variant it can
    skipped = {v.name: reason for v in variants if (reason := adapter.unsupported(v))}
    for reason in skipped.values():
        context.log.warning(f"{name}: skipped {reason}")
    if len(skipped) == len(variants):
        raise dg.Failure(f"{name}: none of the variants {config.variants} runs on this architecture: "
                         + " ".join(skipped.values()))  # fmt: skip
    images = ImageCache()
    answerers = {v.name: model_answerer(adapter, v, images, config.max_new_tokens) for v in variants if v.name not in skipped}
    try:
        result = evaluate(answerers, items, paths.predictions, name, task, config.batch_size,
                          vocabulary=source_vocabulary(paths.catalog, items), items_version=version, log=context.log.info)  # fmt: skip
    except InputFileError as e:
        raise dg.Failure(str(e)) from e
    accuracy = result.accuracy()
    preview = (["variant", "accuracy %", "items"], [(v, a, items.num_rows) for v, a in accuracy.items()])
    return dg.MaterializeResult(
        metadata={**table_metadata(row_count=result.table.num_rows, schema=PREDICTION_SCHEMA, uri=result.path, preview=preview),
                  **{f"accuracy_{v}": a for v, a in accuracy.items()},
                  **{f"items_per_s_{v}": s for v, s in result.items_per_s.items()},
                  "skipped_variants": json.dumps(sorted(skipped)), "device": device},  # fmt: skip
        data_version=dg.DataVersion(config_hash({"items": version, "variants": config.variants, "checkpoint": name})),
    )


@dg.asset(
    partitions_def=evaluation_partitions, deps=[predictions], group_name=GROUP, owners=OWNERS, kinds={"duckdb"},
    tags={"stage": "evaluation"}, pool="duckdb", code_version=EVALUATION_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
)  # fmt: skip
def eval_metrics(context: dg.AssetExecutionContext, paths: MimicPaths) -> dg.MaterializeResult:
    """Per-cell metrics of one checkpoint on one task, every variant: rows of the DuckDB table
    `eval_metrics` (accuracy with Wilson 95% intervals; Listing also micro P/R/F1 and mean item F1 with
    a bootstrap interval). Feeds the `leaderboard` view."""
    keys = context.partition_key.keys_by_dimension
    name, task = keys["checkpoint"], keys["task"]
    path = paths.predictions / name / f"{task}.parquet"
    if not path.exists():
        raise dg.Failure(f"{path} is missing: materialize predictions[{name}|{task}] first")
    preds = pq.read_table(path)
    metrics = pa.Table.from_pylist(metric_rows(preds))
    # every variant of this (checkpoint, task) at once
    catalog.replace_rows(paths.catalog, "eval_metrics", {"checkpoint": name, "task": task}, metrics)
    catalog.create_parquet_views(paths.catalog, "prediction_views", paths.predictions)
    cols, rows = catalog.query(paths.catalog, catalog.named_queries("evaluation")["checkpoint_summary"], {"checkpoint": name, "task": task})
    return dg.MaterializeResult(metadata={**table_metadata(row_count=metrics.num_rows, schema=catalog_schema(paths.catalog, "eval_metrics"),
                                                           uri=paths.catalog, preview=(cols, rows)),
                                          "variants": json.dumps(sorted(set(preds.column("variant").to_pylist()))),
                                          **study_plots(metrics.to_pylist(), paths.root / "plots" / "evaluation" / name, name)})  # fmt: skip


@dg.sensor(
    asset_selection=[checkpoints], default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Registers every complete checkpoint folder (DONE present) as a `checkpoint` partition; "
                "evaluation of its missing partitions then follows through the automation condition.",
)  # fmt: skip
def checkpoint_sensor(context: dg.SensorEvaluationContext, paths: MimicPaths) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(checkpoint_partitions.name))
    new = []
    for folder in complete_checkpoints(paths.checkpoints):
        if folder.name in known:
            continue
        try:
            validate_checkpoint(folder)
        except CheckpointError as e:  # half-copied or misnamed: say why, try again next tick
            context.log.warning(str(e))
            continue
        new.append(folder.name)
    if not new:
        return dg.SensorResult(skip_reason="no new complete checkpoint folder")
    return dg.SensorResult(
        dynamic_partitions_requests=[checkpoint_partitions.build_add_request(new)],
        run_requests=[dg.RunRequest(run_key=f"registry-{'-'.join(sorted(new))}", asset_selection=[checkpoints.key])],
    )


STUDIES = [("counting", "spread"), ("counting", "distractors"), ("counting", "concepts"), ("counting", "n_images"),
           ("listing", "n_subcategories"), ("listing", "distractors"), ("listing", "n_images"),
           ("common", "n_images"), ("odd_one", "n_images")]  # fmt: skip


@dg.asset(
    deps=[dg.AssetDep(eval_metrics, partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep(baseline_scores, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP, owners=OWNERS, kinds={"duckdb", "png"}, tags={"stage": "reports"}, code_version=EVALUATION_VERSION,
)  # fmt: skip
def evaluation_report(context: dg.AssetExecutionContext, paths: MimicPaths) -> dg.MaterializeResult:
    """The leaderboard (view `leaderboard`: MIMIC average and each task per checkpoint and variant) and
    one PNG per study (accuracy against spread, distractors, concepts, image count ..., one line per
    checkpoint, 95% bands) plus accuracy against the sequence-length variant, under `plots/evaluation/`."""
    cols, rows = catalog.query(paths.catalog, "select * from eval_metrics")
    metrics = [dict(zip(cols, r)) for r in rows]
    lb_cols, lb_rows = catalog.query(paths.catalog, "select * from leaderboard")
    out = paths.root / "plots" / "evaluation"
    plots = study_plots(metrics, out, studies=STUDIES)
    variants = variant_plot([dict(zip(lb_cols, r)) for r in lb_rows], out / "variants.png")
    if variants is not None:
        plots["plot_variants"] = image_markdown(variants, "variants")
    metadata = {"leaderboard": dg.MetadataValue.md(markdown_table(lb_cols, lb_rows)), "dagster/row_count": len(lb_rows),
                "dagster/column_schema": catalog_schema(paths.catalog, "leaderboard"), "dagster/uri": dg.MetadataValue.path(str(out)),
                **plots}  # fmt: skip
    context.log.info(f"{len(plots)} plots in {out}")
    return dg.MaterializeResult(metadata=metadata)


refresh_reports = dg.ScheduleDefinition(
    name="refresh_reports", target=[evaluation_report], cron_schedule="*/30 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 30 minutes: redraw the leaderboard and the per-study plots from eval_metrics.",
)  # fmt: skip
