"""The Definitions as the UI shows them: every asset documented, grouped, owned; the demo covers all."""

from __future__ import annotations

from mimic_pipeline.defs import annotations as A
from mimic_pipeline.defs import datasets as D
from mimic_pipeline.defs import evaluation as E
from mimic_pipeline.defs import training as T
from mimic_pipeline.defs.build import build_definitions
from mimic_pipeline.defs.demo import demo_steps
from mimic_pipeline.defs.resources import AnnotationSources

GROUPS = {"shapes_world": "annotations", "annotation_index": "annotations", "eval_items": "datasets",
          "train_items": "datasets", "single_image_items": "datasets", "baseline_scores": "datasets",
          "base_checkpoint": "training", "full_ft_checkpoint": "training", "lora_checkpoint": "training",
          "lora_masked_checkpoint": "training", "checkpoints": "training",
          "predictions": "evaluation", "eval_metrics": "evaluation", "evaluation_report": "evaluation",
          "attention_stats": "attention"}  # fmt: skip


def test_assets_carry_descriptions_groups_kinds_owners():
    defs = build_definitions(data_dir="unused", sources=AnnotationSources())
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == set(GROUPS)
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 80, key
        assert node.group_name == GROUPS[key.to_user_string()]
        assert node.owners == ["team:mimic"]
        assert node.kinds and all(k == k.lower() for k in node.kinds)  # shown as tags / icons in the graph
        assert node.tags.get("stage"), key
    items = ["answer_balance", "answers_rederived"]
    assert {k.to_user_string() for k in graph.asset_check_keys} == {  # the checks tab of each asset lists these
        *(f"annotation_index:{c}" for c in ["non_positive_counts", "orphan_annotations", "unknown_categories"]),
        *(f"{a}:{c}" for a in ["eval_items", "train_items", "single_image_items"] for c in items),
        "train_items:disjoint_from_eval", "baseline_scores:oracle_scores_100"}  # fmt: skip
    for check_key in graph.asset_check_keys:  # every asset check shows what it enforces
        assert graph.get_check_spec(check_key).description, check_key
    for sensor in defs.sensors:
        assert sensor.description, sensor.name
    for schedule in defs.schedules:
        assert schedule.description, schedule.name
    for asset in (A.annotation_index, D.eval_items, D.train_items, D.single_image_items, D.baseline_scores):
        assert asset.op.pool == "duckdb", "every DuckDB writer shares the pool of size 1"
        assert asset.check_specs and all(s.blocking for s in asset.check_specs)
    assert T.checkpoints.op.pool == "duckdb" and E.eval_metrics.op.pool == "duckdb"
    assert E.predictions.op.pool is None  # minutes of generation never hold the DuckDB slot
    for asset in T.TRAINING_ASSETS:  # minutes of training never hold the DuckDB slot: they write files only
        assert asset.op.pool is None


def test_demo_plan_covers_every_asset_and_only_configured_sources():
    defs = build_definitions(data_dir="unused", sources=AnnotationSources())
    steps = [(s.asset_key.to_user_string(), s.partition_key) for s in demo_steps(defs)]
    assert {a for a, _ in steps} == set(GROUPS)
    # per-checkpoint steps come after training, for the four checkpoints the demo trains
    first_eval = min(i for i, (a, _) in enumerate(steps) if a in ("predictions", "attention_stats"))
    assert first_eval > steps.index(("lora_masked_checkpoint", None))
    assert [p for a, p in steps if a == "attention_stats"] == ["base", "full_ft", "lora", "lora_masked"]
    assert len([p for a, p in steps if a == "predictions"]) == 16 and steps[-1] == ("evaluation_report", None)
    assert steps[:2] == [("shapes_world", None), ("annotation_index", "shapes")]
    tasks = ["counting", "listing", "common", "odd_one"]
    for asset in ("eval_items", "train_items", "baseline_scores"):
        assert [p for a, p in steps if a == asset] == tasks
    assert steps.index(("baseline_scores", "counting")) > steps.index(("eval_items", "odd_one"))
    assert steps.index(("base_checkpoint", None)) > steps.index(("single_image_items", None))
    assert steps.index(("lora_masked_checkpoint", None)) > steps.index(("train_items", "odd_one"))
    assert steps.index(("checkpoints", None)) > steps.index(("lora_masked_checkpoint", None))
    assert steps.index(("evaluation_report", None)) > steps.index(("baseline_scores", "odd_one"))
    with_coco = build_definitions(data_dir="unused", sources=AnnotationSources(coco_annotations="x.json"))
    assert [p for a, p in (map(lambda s: (s.asset_key.to_user_string(), s.partition_key), demo_steps(with_coco)))
            if a == "annotation_index"] == ["shapes", "coco"]  # fmt: skip
