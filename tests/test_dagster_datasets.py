"""The datasets stage through Dagster: item sets with their blocking checks, lineage, baselines."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.defs import annotations as A
from mimic_pipeline.defs import datasets as D
from mimic_pipeline.defs.build import build_definitions
from mimic_pipeline.defs.resources import AnnotationSources

from .conftest import assert_ui_metadata

WORLD = {"n_eval_images": 300, "n_train_images": 400, "seed": 2}


def run(defs, instance, asset, partition=None, config=None):
    return dg.materialize(
        list(defs.assets), selection=[asset.key], partition_key=partition, resources=defs.resources, instance=instance,
        raise_on_error=False, run_config={"ops": {asset.key.path[-1]: {"config": config}}} if config else None,
    )  # fmt: skip


def shapes_eval_sets(data, items_per_cell: int, world: dict | None = None, instance: dg.DagsterInstance | None = None):
    """A shapes world, its index in the catalogue and the four eval sets in `data`, through Dagster (on
    `instance`, e.g. the one a webserver shows, or an ephemeral one)."""
    defs = build_definitions(data_dir=str(data), sources=AnnotationSources())
    instance = instance or dg.DagsterInstance.ephemeral()
    assert run(defs, instance, A.shapes_world, config=world or {"n_eval_images": 300, "n_train_images": 100, "seed": 4}).success
    assert run(defs, instance, A.annotation_index, "shapes").success
    for task in ("counting", "listing", "common", "odd_one"):
        assert run(defs, instance, D.eval_items, task, {"items_per_cell": items_per_cell}).success
    return defs, instance


def checks(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    defs = build_definitions(data_dir=str(data), sources=AnnotationSources())
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs, instance, A.shapes_world, config=WORLD).success
    assert run(defs, instance, A.annotation_index, "shapes").success
    return defs, instance, data


def test_train_items_before_eval_warns_that_disjointness_is_unchecked(pipeline):
    defs, instance, data = pipeline
    result = run(defs, instance, D.train_items, "common", {"total_items": 400})
    assert result.success  # a WARN-severity check does not block
    evaluation = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not evaluation["disjoint_from_eval"].passed
    assert evaluation["disjoint_from_eval"].severity == dg.AssetCheckSeverity.WARN


def test_eval_items_pass_their_checks_and_record_lineage(pipeline):
    defs, instance, data = pipeline
    result = run(defs, instance, D.eval_items, "counting", {"items_per_cell": 5})
    assert result.success and checks(result) == {"answers_rederived": True, "answer_balance": True}
    md = result.asset_materializations_for_node("eval_items")[0].metadata
    table = pq.read_table(data / "datasets" / "eval" / "counting.parquet")
    assert md["dagster/row_count"].value == table.num_rows == 5 * 24
    assert_ui_metadata(md, columns=["item_id", "task", "axis", "axis_value"])
    assert md["preview"].value.startswith("| item_id | n_images | question | answer |")
    assert set(table.column("config_hash").to_pylist()) == {md["config_hash"].value}
    assert catalog.query(data / "mimic.duckdb", "select count(*) from eval_items")[1] == [(120,)]

    # a config change is a new data version; the same config is the same version
    version = lambda r: r.asset_materializations_for_node("eval_items")[0].tags["dagster/data_version"]  # noqa: E731
    again = run(defs, instance, D.eval_items, "counting", {"items_per_cell": 5})
    other = run(defs, instance, D.eval_items, "counting", {"items_per_cell": 5, "seed": 9})
    assert version(again) == version(result) != version(other)
    assert pq.read_table(data / "datasets" / "eval" / "counting.parquet").column("seed").to_pylist()[0] == 9


def test_train_items_are_disjoint_from_eval_and_written_for_llava(pipeline):
    import json

    defs, instance, data = pipeline
    assert run(defs, instance, D.eval_items, "listing", {"items_per_cell": 4}).success
    result = run(defs, instance, D.train_items, "listing", {"total_items": 1000})
    assert result.success
    assert checks(result) == {"answers_rederived": True, "answer_balance": True, "disjoint_from_eval": True}
    train = pq.read_table(data / "datasets" / "train" / "listing.parquet")
    assert train.num_rows == 200  # listing's 20% share of 1,000
    assert assert_ui_metadata(result.asset_materializations_for_node("train_items")[0].metadata, columns=["item_id"]) == 200
    conversations = json.loads((data / "datasets" / "llava" / "listing.json").read_text())
    first = conversations[0]
    assert first["id"] == train.column("item_id")[0].as_py()
    assert first["conversations"][0]["value"].count("<image>") == len(first["image"]) == train.column("n_images")[0].as_py()
    assert first["conversations"][1] == {"from": "gpt", "value": train.column("answer")[0].as_py()}


def test_single_image_items_and_baselines(pipeline):
    defs, instance, data = pipeline
    single = run(defs, instance, D.single_image_items, config={"n_items": 300})
    assert single.success and checks(single) == {"answers_rederived": True, "answer_balance": True}
    assert assert_ui_metadata(single.asset_materializations_for_node("single_image_items")[0].metadata, columns=["item_id"]) == 300
    assert run(defs, instance, D.eval_items, "odd_one", {"items_per_cell": 4}).success
    result = run(defs, instance, D.baseline_scores, "odd_one")
    assert result.success and checks(result) == {"oracle_scores_100": True}
    md = result.asset_materializations_for_node("baseline_scores")[0].metadata
    assert md["oracle_accuracy"].value == 100.0
    assert_ui_metadata(md, columns=["checkpoint", "variant", "item_id", "task"])
    assert 0 <= md["random_accuracy"].value < 100
    rows = catalog.query(data / "mimic.duckdb", "select distinct checkpoint from eval_metrics where task = 'odd_one' order by 1")[1]
    assert rows == [("majority",), ("oracle",), ("random",)]
    # the same files and view as a checkpoint's predictions: predictions/<answerer>/<task>.parquet
    n = catalog.query(data / "mimic.duckdb", "select count(*) from eval_items where task = 'odd_one'")[1][0][0]
    view = catalog.query(data / "mimic.duckdb", "select checkpoint, variant, count(*), count(distinct item_id), bool_and(correct) "
                         "from predictions where task = 'odd_one' group by all order by 1")[1]  # fmt: skip
    assert [r[:4] for r in view] == [(b, "default", n, n) for b in ("majority", "oracle", "random")]
    assert dict((r[0], r[4]) for r in view)["oracle"] is True
    assert all((data / "predictions" / b / "odd_one.parquet").exists() for b in ("majority", "oracle", "random"))


def test_a_source_without_an_index_fails_with_the_step_to_take(pipeline):
    defs, instance, data = pipeline
    result = run(defs, instance, D.eval_items, "common", {"source": "coco", "split": "val2017"})
    assert not result.success
    message = "\n".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)
    assert "no annotation index for source 'coco'" in message and "materialize annotation_index[coco] first" in message


def test_an_item_set_failing_a_blocking_check_never_replaces_the_good_one(pipeline, monkeypatch):
    """The SQL re-derivation runs on a staged file; a wrong answer fails the run and the published set stays."""
    defs, instance, data = pipeline
    assert run(defs, instance, D.eval_items, "common", {"items_per_cell": 3}).success
    published = data / "datasets" / "eval" / "common.parquet"
    good = published.read_bytes()

    real_generate = D.generate_task

    def with_a_wrong_answer(*args, **kwargs):  # as if the Python engine had let one bad item through
        table = real_generate(*args, **kwargs)
        answers = table.column("answer").to_pylist()
        answers[0] = "not a category"
        return table.set_column(table.schema.get_field_index("answer"), "answer", pa.array(answers))

    monkeypatch.setattr(D, "generate_task", with_a_wrong_answer)
    result = run(defs, instance, D.eval_items, "common", {"items_per_cell": 3, "seed": 5})
    assert not result.success
    message = "\n".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)
    assert "blocking checks failed: answers_rederived" in message and f"{published} keeps the previous items" in message
    assert published.read_bytes() == good
    assert not list((data / "datasets" / "staging").glob("*.parquet"))
