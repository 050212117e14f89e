"""The evaluation stage through Dagster: the checkpoint sensor, the automation condition, predictions,
per-cell metrics in DuckDB and the leaderboard view."""

from __future__ import annotations

import dagster as dg
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.core.models.tiny import TinyModelConfig, build_tiny_checkpoint
from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY
from mimic_pipeline.defs import attention as AT
from mimic_pipeline.defs import evaluation as E
from mimic_pipeline.defs.partitions import checkpoint_partitions

from .conftest import assert_ui_metadata
from .test_dagster_datasets import run, shapes_eval_sets

TASKS = ["counting", "listing", "common", "odd_one"]
SMALL = TinyModelConfig(vision_hidden=32, text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1)


def copy_in(folder, done: bool = True):
    """A checkpoint a user drops into the folder (an untrained tiny model is enough to test the wiring)."""
    build_tiny_checkpoint(folder, [c for cs in DEFAULT_TAXONOMY.values() for c in cs], list(DEFAULT_TAXONOMY), SMALL)
    if done:
        (folder / "DONE").write_text("copied\n")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    defs, instance = shapes_eval_sets(data, items_per_cell=3)
    return defs, instance, data


def sensor_result(defs, instance):
    sensor = defs.resolve_sensor_def("checkpoint_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        return sensor(context)


def test_the_sensor_registers_only_complete_checkpoints(pipeline):
    defs, instance, data = pipeline
    assert defs.resolve_sensor_def("checkpoint_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    copy_in(data / "checkpoints" / "still_copying", done=False)
    result = sensor_result(defs, instance)
    assert not result.dynamic_partitions_requests and not result.run_requests  # no DONE: nothing happens

    copy_in(data / "checkpoints" / "dropped")
    result = sensor_result(defs, instance)
    (request,) = result.dynamic_partitions_requests
    assert request.partitions_def_name == "checkpoint" and list(request.partition_keys) == ["dropped"]
    assert [r.asset_selection for r in result.run_requests] == [[dg.AssetKey("checkpoints")]]


def test_a_new_checkpoint_requests_exactly_its_evaluation_partitions(pipeline):
    defs, instance, data = pipeline
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the daemon's earlier tick
    assert not before.get_requested_partitions(dg.AssetKey("predictions"))
    instance.add_dynamic_partitions(checkpoint_partitions.name, ["dropped"])  # what the sensor's request does
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    requested = {str(key) for key in result.get_requested_partitions(dg.AssetKey("predictions"))}
    assert requested == {f"dropped|{task}" for task in TASKS}
    # a second tick asks for nothing more: on_missing fires once per newly missing partition
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert not again.get_requested_partitions(dg.AssetKey("predictions"))


def test_predictions_and_metrics_reach_the_leaderboard(pipeline):
    defs, instance, data = pipeline
    if not (data / "checkpoints" / "dropped" / "DONE").exists():
        copy_in(data / "checkpoints" / "dropped")
    instance.add_dynamic_partitions(checkpoint_partitions.name, ["dropped"])
    key = dg.MultiPartitionKey({"checkpoint": "dropped", "task": "counting"})
    config = {"variants": ["pool1", "pool4"], "max_new_tokens": 4}
    result = run(defs, instance, E.predictions, key, config)
    assert result.success
    n_items = catalog.query(data / "mimic.duckdb", "select count(*) from eval_items where task = 'counting'")[1][0][0]
    table = catalog.query(data / "mimic.duckdb", f"select variant, count(*), count(distinct item_id) from "
                          f"read_parquet('{data}/predictions/dropped/counting.parquet') group by 1 order by 1")[1]  # fmt: skip
    assert table == [("pool1", n_items, n_items), ("pool4", n_items, n_items)]
    md = result.asset_materializations_for_node("predictions")[0].metadata
    assert assert_ui_metadata(md, columns=["checkpoint", "variant", "item_id"]) == 2 * n_items
    assert {"accuracy_pool1", "accuracy_pool4"} <= set(md)  # stable numeric keys: the UI plots them over runs
    metrics = run(defs, instance, E.eval_metrics, key)
    assert metrics.success
    md = metrics.asset_materializations_for_node("eval_metrics")[0].metadata
    studies = ("plot_counting_spread", "plot_counting_distractors", "plot_counting_concepts", "plot_counting_n_images")
    assert_ui_metadata(md, columns=["checkpoint", "variant", "task", "axis", "axis_value", "metric"], plots=studies)
    assert md["preview"].value.startswith("| variant | axis | accuracy | n |")
    assert (data / "plots" / "evaluation" / "dropped" / "counting_spread.png").exists()
    view = catalog.query(data / "mimic.duckdb", "select variant, count(*) from predictions where checkpoint = 'dropped' group by 1 order by 1")[1]
    assert view == [("pool1", n_items), ("pool4", n_items)]  # the DuckDB view over every answerer's predictions
    rows = catalog.query(data / "mimic.duckdb", "select checkpoint, variant, tasks from leaderboard where checkpoint = 'dropped' order by variant")[1]
    assert rows == [("dropped", "pool1", 1), ("dropped", "pool4", 1)]
    cells = catalog.query(data / "mimic.duckdb", "select count(distinct axis_value) from eval_metrics where checkpoint = 'dropped' and axis = 'spread'")[1][0][0]
    assert cells == 6  # five spread patterns + 'all'

    report = run(defs, instance, E.evaluation_report)
    assert report.success
    md = report.asset_materializations_for_node("evaluation_report")[0].metadata
    assert "| dropped | pool1 |" in md["leaderboard"].value
    assert md["plot_counting_spread"].value.startswith("![counting spread](data:image/png;base64,")
    assert_ui_metadata(md, columns=["checkpoint", "variant", "mimic_average"], preview="leaderboard", plots=("plot_variants",))
    assert (data / "plots" / "evaluation" / "counting_spread.png").exists()
    assert (data / "plots" / "evaluation" / "variants.png").exists()  # pool1 vs pool4 of one checkpoint


def test_reports_are_refreshed_on_a_schedule_that_runs_by_default(pipeline):
    defs, _, _ = pipeline
    schedule = defs.resolve_schedule_def("refresh_reports")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.cron_schedule == "*/30 * * * *"


def test_a_missing_or_half_copied_checkpoint_fails_with_the_fix(pipeline):
    defs, instance, data = pipeline
    instance.add_dynamic_partitions(checkpoint_partitions.name, ["ghost"])
    result = run(defs, instance, E.predictions, dg.MultiPartitionKey({"checkpoint": "ghost", "task": "common"}))
    assert not result.success and "no DONE marker" in str(result.all_events)


def test_attention_stats_of_a_masked_checkpoint_show_no_cross_image_attention_in_masked_layers(pipeline, tmp_path):
    import json

    defs, instance, data = pipeline
    folder = data / "checkpoints" / "masked_copy"
    copy_in(folder, done=False)  # as if trained with the mask on the second half of its 2 LM layers
    (folder / "mimic_checkpoint.json").write_text(json.dumps({"masked_layers": [1], "mask_mode": "block"}))
    (folder / "DONE").write_text("copied\n")
    instance.add_dynamic_partitions(checkpoint_partitions.name, ["masked_copy"])
    result = run(defs, instance, AT.attention_stats, "masked_copy", {"n_items": 4})
    assert result.success
    md = result.asset_materializations_for_node("attention_stats")[0].metadata
    assert md["masked_layers"].value == "[1]" and md["max_cross_image_share_in_masked_layers"].value == 0.0
    assert_ui_metadata(md, columns=["checkpoint", "layer"], plots=("attention_plot",))
    rows = dict(catalog.query(data / "mimic.duckdb", "select layer, share from attention_stats where checkpoint = "
                              "'masked_copy' and kind = 'vision_query' and target = 'other_images'")[1])  # fmt: skip
    assert rows[1] == 0.0 and rows[0] > 0.0  # the unmasked layer does look across images
    sums = catalog.query(data / "mimic.duckdb", "select kind, layer, sum(share) from attention_stats where "
                         "checkpoint = 'masked_copy' group by all")[1]  # fmt: skip
    assert all(abs(total - 1) < 1e-6 for _, _, total in sums)
    assert (data / "plots" / "attention" / "masked_copy.png").exists()


def test_a_dropped_in_qwen2_vl_checkpoint_runs_every_default_variant_it_can(pipeline):
    """Automatic evaluation uses the default variants; Qwen2-VL cannot pool, so pool4 is skipped, not fatal."""
    import json

    from .test_models import build_tiny_qwen2_vl

    defs, instance, data = pipeline
    folder = data / "checkpoints" / "qwen_copy"
    build_tiny_qwen2_vl(folder)
    (folder / "DONE").write_text("copied\n")
    instance.add_dynamic_partitions(checkpoint_partitions.name, ["qwen_copy"])
    result = run(defs, instance, E.predictions, dg.MultiPartitionKey({"checkpoint": "qwen_copy", "task": "common"}),
                 {"max_new_tokens": 2})  # fmt: skip
    assert result.success
    md = result.asset_materializations_for_node("predictions")[0].metadata
    assert json.loads(md["skipped_variants"].value) == ["pool4"] and md["device"].value == "cpu"
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("skipped variant pool4: vision-token pooling is implemented for LLaVA-OneVision" in m for m in logs)
    n_items = catalog.query(data / "mimic.duckdb", "select count(*) from eval_items where task = 'common'")[1][0][0]
    variants = catalog.query(data / "mimic.duckdb", f"select variant, count(*) from read_parquet('{folder.parent.parent}"
                             "/predictions/qwen_copy/common.parquet') group by 1 order by 1")[1]  # fmt: skip
    assert variants == [("pixels4", n_items), ("pool1", n_items)]

    bad = run(defs, instance, E.predictions, dg.MultiPartitionKey({"checkpoint": "qwen_copy", "task": "listing"}),
              {"variants": ["pool4"]})  # fmt: skip
    assert not bad.success and "none of the variants ['pool4'] runs on this architecture" in str(bad.all_events)
