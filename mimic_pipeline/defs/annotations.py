"""Stage `annotations`: the shapes world's source files and one annotation index per source."""


import time

import dagster as dg

from ..core import catalog
from ..core.annotations import INDEX_TABLES, load_source
from ..core.errors import InputFileError
from ..core.files import config_hash, file_fingerprints
from ..core.tables import markdown_table
from ..core.shapes_world import GENERATOR_VERSION, ShapesWorldConfig, build_shapes_world, contact_sheet
from .metadata import image_markdown, table_metadata
from .partitions import source_partitions
from .resources import AnnotationSources, MimicPaths

GROUP = "annotations"
OWNERS = ["team:mimic"]
INDEX_LOADER_VERSION = "index/1"


class ShapesWorldSettings(dg.Config):
    """How big the rendered shapes world is and how it looks (all values recorded with the files)."""

    seed: int = 0
    image_size: int = 32
    grid: int = 4
    n_eval_images: int = 3000
    n_train_images: int = 20000
    max_objects: int = 6
    crowd_fraction: float = 0.05
    color_mode: str = "fixed"


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "png", "json", "csv"},
    tags={"stage": "annotations"},
    code_version=GENERATOR_VERSION,
)
def shapes_world(context: dg.AssetExecutionContext, config: ShapesWorldSettings, paths: MimicPaths) -> dg.MaterializeResult:
    """The embedded default source: rendered images of coloured shapes grouped under parents.

    Writes the eval split as a real COCO instances JSON and the train split as real OpenImages V7
    files (box CSV, class descriptions, hierarchy JSON), plus PNG images and a manifest with the
    config hash. Same config, byte-identical files. The folder is swapped in atomically.
    """
    cfg = ShapesWorldConfig(**config.model_dump())
    started = time.perf_counter()
    last_logged: dict[str, int] = {}

    def progress(split: str, done: int, total: int) -> None:
        step = max(total // 10, 1)
        if done == total or done - last_logged.get(split, 0) >= step:
            last_logged[split] = done
            rate = done / max(time.perf_counter() - started, 1e-9)
            context.log.info(f"shapes world {split}: {done}/{total} images rendered ({rate:.0f} images/s overall)")

    root = paths.source_dir("shapes")
    result = build_shapes_world(cfg, root, progress=progress)
    sheet = contact_sheet(result.files, paths.root / "plots" / "shapes_world_sample.png")
    counts = result.manifest["counts"]
    rows = [(split, c["images"], c["objects"], c["crowd_objects"]) for split, c in counts.items()]
    return dg.MaterializeResult(
        metadata={
            **table_metadata(
                row_count=sum(c["images"] for c in counts.values()),
                uri=root,
                preview=(["split", "images", "objects", "crowd/group objects"], rows),
            ),
            "coco_annotations": dg.MetadataValue.path(str(result.files.coco_annotations)),
            "openimages_boxes": dg.MetadataValue.path(str(result.files.openimages_boxes)),
            "sample_images": dg.MetadataValue.path(str(sheet)),
            "sample_sheet": image_markdown(sheet, "sample shapes world images"),
            "config_hash": cfg.hash,
            "generator_version": GENERATOR_VERSION,
            "eval_images": counts["eval"]["images"],
            "train_images": counts["train"]["images"],
            "seconds": round(time.perf_counter() - started, 2),
        },
        data_version=dg.DataVersion(cfg.hash),
    )


INDEX_CHECKS = {
    "orphan_annotations": "every instance count points at an image listed for the same source and split",
    "unknown_categories": "every counted category is listed in the source's categories",
    "non_positive_counts": "every instance count is at least 1",
}


@dg.asset(
    partitions_def=source_partitions,
    deps=[shapes_world],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"duckdb", "parquet"},
    tags={"stage": "annotations"},
    pool="duckdb",
    code_version=INDEX_LOADER_VERSION,
    check_specs=[
        dg.AssetCheckSpec(name, asset="annotation_index", description=desc, blocking=True)
        for name, desc in INDEX_CHECKS.items()
    ],
)
def annotation_index(context: dg.AssetExecutionContext, paths: MimicPaths, sources: AnnotationSources) -> dg.MaterializeResult:
    """The normalized annotation index of one source, in the DuckDB catalogue (+ Parquet).

    Tables `categories`, `images` and `instance_counts` (rows of this source replaced in one
    transaction: a bad input file fails the run and leaves the previous catalogue intact), plus a
    row in `annotation_builds` recording the files read. Partition `shapes` reads the rendered shapes
    world; `coco` and `openimages` read the files configured in the `sources` resource.
    """
    source = context.partition_key
    if source == "shapes" and not paths.source_dir("shapes").exists():
        raise dg.Failure(description=f"no shapes world at {paths.source_dir('shapes')}: materialize shapes_world first")
    parts = sources.parts(source, paths)
    started = time.perf_counter()
    try:
        index = load_source(source, parts)
    except InputFileError as e:
        # Nothing was written yet: the catalogue keeps its previous rows for this source.
        raise dg.Failure(description=str(e), metadata={"file": dg.MetadataValue.path(str(e.path))}) from e
    load_s = time.perf_counter() - started
    fingerprint = config_hash({"loader": INDEX_LOADER_VERSION, "files": file_fingerprints(index.source_files)})
    parquet = catalog.export_index_parquet(index, paths.index_dir(source))
    counts = catalog.replace_source_index(paths.catalog, index, fingerprint)
    context.log.info(f"{source}: {counts} written to {paths.catalog} in {time.perf_counter() - started:.1f}s")

    check_results = []
    for name, sql in catalog.named_queries("annotation_checks").items():
        cols, rows = catalog.query(paths.catalog, sql, {"source": source})
        check_results.append(dg.AssetCheckResult(
            check_name=name, passed=not rows,
            metadata={"offending_rows": len(rows), "examples": dg.MetadataValue.md(_examples(cols, rows))},
        ))  # fmt: skip
    preview = catalog.query(paths.catalog, catalog.named_queries("annotation_reports")["category_summary"], {"source": source})
    return dg.MaterializeResult(
        metadata={
            **table_metadata(row_count=counts["instance_counts"], schema=INDEX_TABLES["instance_counts"],
                             uri=paths.catalog, preview=preview),  # fmt: skip
            "n_images": counts["images"],
            "n_categories": counts["categories"],
            "n_count_rows": counts["instance_counts"],
            "load_seconds": round(load_s, 2),
            "parquet": dg.MetadataValue.path(str(parquet["instance_counts"].parent)),
            "loader_notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in index.notes) or "-"),
        },
        check_results=check_results,
        data_version=dg.DataVersion(fingerprint),
    )


def _examples(cols: list[str], rows: list[tuple]) -> str:
    return markdown_table(cols, rows[:10]) if rows else "none"
