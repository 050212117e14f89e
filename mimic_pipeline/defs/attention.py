"""Stage `attention`: per checkpoint and layer, where attention goes on a fixed sample of eval items."""

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import catalog
from ..core.attention import ATTENTION_STATS_SCHEMA, attention_statistics
from ..core.models.adapters import ModelInput
from ..core.reports import attention_plot
from ..core.training.checkpoints import CheckpointError, validate_checkpoint
from ..core.training.data import ImageCache, model_inputs
from .datasets import eval_items
from .metadata import image_markdown, table_metadata
from .partitions import checkpoint_partitions
from .resources import MimicPaths

GROUP = "attention"
OWNERS = ["team:mimic"]


class AttentionSettings(dg.Config):
    """The fixed sample: the first `n_items` counting items with `n_images` images (same count for all,
    so image positions compare)."""

    n_items: int = 32
    n_images: int = 4
    batch_size: int = 8


def _sample(paths: MimicPaths, config: AttentionSettings) -> list[ModelInput]:
    path = paths.datasets / "eval" / "counting.parquet"
    if not path.exists():
        raise dg.Failure(f"{path} is missing: materialize eval_items[counting] first")
    table = pq.read_table(path, columns=["item_id", "question", "image_paths", "n_images"])
    table = table.filter(pa.compute.equal(table["n_images"], config.n_images)).sort_by("item_id").slice(0, config.n_items)
    if table.num_rows == 0:
        raise dg.Failure(f"no counting item with {config.n_images} images in {path}: choose another n_images")
    return model_inputs(ImageCache(), table.column("image_paths").to_pylist(), table.column("question").to_pylist())


@dg.asset(
    partitions_def=checkpoint_partitions, deps=[dg.AssetDep(eval_items, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP, owners=OWNERS, kinds={"pytorch", "duckdb", "png"}, tags={"stage": "attention"}, pool="duckdb",
    automation_condition=dg.AutomationCondition.on_missing() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)  # fmt: skip
def attention_stats(context: dg.AssetExecutionContext, config: AttentionSettings, paths: MimicPaths) -> dg.MaterializeResult:
    """Per LM layer of one checkpoint: the share of attention that vision tokens give their own image,
    the other images and text, and the share the answering token gives each image position and text,
    on a fixed sample of counting items. Per-layer hooks reduce each layer's attention at once (never
    all layers' S x S). Rows in the DuckDB table `attention_stats`; a per-layer plot. A checkpoint
    trained with the layer-wise mask shows exactly zero cross-image share in its masked layers."""
    name = context.partition_key
    folder = paths.checkpoints / name
    try:
        validate_checkpoint(folder)
    except CheckpointError as e:
        raise dg.Failure(str(e)) from e
    from ..core.models.adapters import load_adapter

    adapter = load_adapter(folder)
    rows = [{"checkpoint": name, **r} for r in attention_statistics(adapter, _sample(paths, config), config.batch_size)]
    table = pa.Table.from_pylist(rows, schema=ATTENTION_STATS_SCHEMA)
    catalog.replace_rows(paths.catalog, "attention_stats", {"checkpoint": name}, table)
    plot = attention_plot(rows, name, paths.root / "plots" / "attention" / f"{name}.png")
    cols, cross = catalog.query(paths.catalog, catalog.named_queries("attention")["cross_image_by_layer"], {"checkpoint": name})
    masked = adapter.layer_mask.layers if adapter.layer_mask is not None else []
    return dg.MaterializeResult(metadata={
        **table_metadata(row_count=table.num_rows, schema=ATTENTION_STATS_SCHEMA, uri=paths.catalog, preview=(cols, cross)),
        "masked_layers": str(list(masked)), "attention_plot": image_markdown(plot, f"attention by layer of {name}"),
        "max_cross_image_share_in_masked_layers": max((r["share"] for r in rows if r["kind"] == "vision_query"
                                                       and r["target"] == "other_images" and r["layer"] in masked),
                                                      default=0.0),
    })  # fmt: skip
