"""The annotations stage through Dagster: materialization, checks, metadata, bad input, config."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.core.shapes_world import ShapesWorldConfig
from mimic_pipeline.defs import annotations as A
from mimic_pipeline.defs.build import build_definitions
from mimic_pipeline.defs.resources import AnnotationSources

from .conftest import REAL_DATA, assert_ui_metadata, real_data

SMALL = {"n_eval_images": 40, "n_train_images": 60, "seed": 5}


def run(defs, key, partition=None, config=None, instance=None):
    return dg.materialize(
        list(defs.assets), selection=[key], partition_key=partition, resources=defs.resources,
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"ops": {key.path[-1]: {"config": config}}} if config else None,
    )  # fmt: skip


def failure_message(result) -> str:
    return "\n".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)


@pytest.fixture
def shapes_defs(tmp_path):
    defs = build_definitions(data_dir=str(tmp_path), sources=AnnotationSources())
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs, A.shapes_world.key, config=SMALL, instance=instance).success
    return defs, instance, tmp_path


def test_shapes_index_materializes_with_checks_and_metadata(shapes_defs):
    defs, instance, data = shapes_defs
    result = run(defs, A.annotation_index.key, "shapes", instance=instance)
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"orphan_annotations": True, "unknown_categories": True, "non_positive_counts": True}

    md = result.asset_materializations_for_node("annotation_index")[0].metadata
    db = data / "mimic.duckdb"
    (n_rows,) = catalog.query(db, "select count(*) from instance_counts where source = 'shapes'")[1][0]
    assert md["dagster/row_count"].value == n_rows > 0
    assert [c.name for c in md["dagster/column_schema"].schema.columns] == ["source", "split", "image_id", "category_id", "count", "crowd"]
    assert md["dagster/uri"].value == str(db)
    assert md["preview"].value.startswith("| split | category | parent | images | instances | crowd_images |")
    assert md["n_images"].value == catalog.query(db, "select count(*) from images")[1][0][0]
    assert_ui_metadata(md, columns=["source", "split", "image_id"])
    world_md = instance.get_latest_materialization_event(A.shapes_world.key).asset_materialization.metadata
    assert assert_ui_metadata(world_md, plots=("sample_sheet",)) == SMALL["n_eval_images"] + SMALL["n_train_images"]
    assert (data / "index" / "shapes" / "instance_counts.parquet").exists()

    # lineage: the data version is the config hash, recorded in the instance
    world = instance.get_latest_materialization_event(A.shapes_world.key).asset_materialization
    assert world.tags["dagster/data_version"] == ShapesWorldConfig(**SMALL).hash
    build = catalog.query(db, "select source_files from annotation_builds")[1][0][0]
    assert set(json.loads(build)) == {"0:coco_annotations", "0:coco_images", "1:openimages_boxes", "1:openimages_classes",
                                      "1:openimages_hierarchy", "1:openimages_images"}  # fmt: skip


def test_shapes_index_before_the_world_exists_says_what_to_do(tmp_path):
    defs = build_definitions(data_dir=str(tmp_path), sources=AnnotationSources())
    result = run(defs, A.annotation_index.key, "shapes")
    assert not result.success
    assert "materialize shapes_world first" in failure_message(result)


def test_unconfigured_source_fails_with_the_settings_to_make(tmp_path):
    defs = build_definitions(data_dir=str(tmp_path), sources=AnnotationSources())
    result = run(defs, A.annotation_index.key, "openimages")
    assert not result.success
    assert "source 'openimages' is not configured: set MIMIC_OPENIMAGES_BOXES" in failure_message(result)


@real_data
def test_configured_coco_source_and_a_bad_file_keeps_the_catalogue(tmp_path):
    good = AnnotationSources(coco_annotations=str(REAL_DATA / "coco_panoptic_sample_detection.json"),
                             coco_images=str(REAL_DATA), coco_require_images=True)  # fmt: skip
    defs = build_definitions(data_dir=str(tmp_path), sources=good)
    assert run(defs, A.annotation_index.key, "coco").success
    db = tmp_path / "mimic.duckdb"
    before = catalog.query(db, "select * from instance_counts order by all")[1]
    assert ("coco", "val2017", "439180", "19", 12, True) in before

    corrupt = tmp_path / "instances_val2017.json"
    corrupt.write_text((REAL_DATA / "coco_panoptic_sample_detection.json").read_text()[:5000])  # a truncated download
    defs_bad = build_definitions(data_dir=str(tmp_path), sources=AnnotationSources(coco_annotations=str(corrupt)))
    result = run(defs_bad, A.annotation_index.key, "coco")
    assert not result.success
    msg = failure_message(result)
    assert f"{corrupt}: is not valid JSON" in msg and "download or export the COCO annotation file again" in msg
    assert catalog.query(db, "select * from instance_counts order by all")[1] == before
    assert catalog.query(db, "select count(*) from annotation_builds")[1] == [(1,)]
