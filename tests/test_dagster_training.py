"""The training stage through Dagster: checkpoint assets, the dynamic partition set, the registry table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.core.training.checkpoints import validate_checkpoint
from mimic_pipeline.core.training.data import ItemPool
from mimic_pipeline.core.training.recipes import configured_recipe
from mimic_pipeline.core.training.trainer import TrainingData, staging_dir, train_checkpoint
from mimic_pipeline.defs import annotations as A
from mimic_pipeline.defs import datasets as D
from mimic_pipeline.defs import training as T
from mimic_pipeline.defs.build import build_definitions
from mimic_pipeline.defs.partitions import checkpoint_partitions
from mimic_pipeline.defs.resources import AnnotationSources

from .conftest import assert_ui_metadata
from .test_dagster_datasets import run

QUICK = {"steps_scale": 0.001, "heldout_items": 8}  # 2 steps of everything: the wiring, not the learning


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    defs = build_definitions(data_dir=str(data), sources=AnnotationSources())
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs, instance, A.shapes_world, config={"n_eval_images": 200, "n_train_images": 300, "seed": 3}).success
    assert run(defs, instance, A.annotation_index, "shapes").success
    assert run(defs, instance, D.single_image_items, config={"n_items": 200}).success
    for task in ("counting", "listing", "common", "odd_one"):
        assert run(defs, instance, D.train_items, task, {"total_items": 200}).success
    base = run(defs, instance, T.base_checkpoint, config=QUICK)
    assert base.success
    return defs, instance, data, base


def materialization(result, asset) -> dict:
    return result.asset_materializations_for_node(asset.op.name)[0].metadata


def test_base_checkpoint_is_written_registered_and_described(pipeline):
    defs, instance, data, result = pipeline
    folder = data / "checkpoints" / "base"
    assert (folder / "DONE").exists() and (folder / "mimic_checkpoint.json").exists()
    assert "base" in instance.get_dynamic_partitions(checkpoint_partitions.name)
    md = materialization(result, T.base_checkpoint)
    assert md["steps"].value == 2 and md["trainable_parameters"].value > 0
    assert Path(md["loss_plot"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md["loss_curve"].value.startswith("![training loss of base](data:image/png;base64,")
    assert 0 <= md["heldout_accuracy_after"].value <= 100
    assert_ui_metadata(md, rows=False, plots=("loss_curve",))  # a directory, not a table: its files are the preview
    assert "| config.json |" in md["preview"].value and "| DONE |" in md["preview"].value
    meta = json.loads((folder / "mimic_checkpoint.json").read_text())
    assert meta["dagster_run_id"] == result.run_id and meta["base_checkpoint"] is None
    # the tiny model's vocabulary is the shapes world's: every leaf and parent name is one known word
    tokenizer = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"\u2581triangle", "\u2581heart", "\u2581polygon", "\u2581symbol"} <= set(tokenizer)


def test_lora_masked_checkpoint_names_its_base_and_the_masked_layers(pipeline):
    defs, instance, data, _ = pipeline
    result = run(defs, instance, T.lora_masked_checkpoint, config=QUICK)
    assert result.success
    md = materialization(result, T.lora_masked_checkpoint)
    assert md["masked_layers"].value == "[2, 3]"  # second half of the tiny model's 4 LM layers
    assert md["recipe"].value["lora_r"] == 128 and md["recipe"].value["lora_alpha"] == 32
    assert "heldout_accuracy_before" in md and "heldout_accuracy_after" in md
    adapter_config = json.loads((data / "checkpoints" / "lora_masked" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((data / "checkpoints" / "base").resolve())
    assert {"base", "lora_masked"} <= set(instance.get_dynamic_partitions(checkpoint_partitions.name))


def test_registry_lists_complete_checkpoints_including_copied_ones(pipeline):
    defs, instance, data, _ = pipeline
    ckpts = data / "checkpoints"
    shutil.copytree(ckpts / "base", ckpts / "dropped_in")
    (ckpts / "dropped_in" / "mimic_checkpoint.json").unlink()  # a checkpoint from elsewhere: no metadata
    shutil.copytree(ckpts / "base", ckpts / "still_copying")
    (ckpts / "still_copying" / "DONE").unlink()
    assert run(defs, instance, T.checkpoints).success
    _, rows = catalog.query(data / "mimic.duckdb", "select name, recipe, parent from checkpoints order by name")
    names = [r[0] for r in rows]
    assert "still_copying" not in names
    assert ("base", "base", None) in rows and ("dropped_in", "external", None) in rows
    if "lora_masked" in names:
        assert ("lora_masked", "lora_masked", "base") in rows
    assert "dropped_in" in instance.get_dynamic_partitions(checkpoint_partitions.name)
    again = run(defs, instance, T.checkpoints)  # nothing new: the table is rewritten, no partition added
    assert again.success and materialization(again, T.checkpoints)["new_partitions"].value == "none"
    assert assert_ui_metadata(materialization(again, T.checkpoints), columns=["name", "recipe", "parent", "path"]) == len(names)
    assert catalog.query(data / "mimic.duckdb", "select count(*) from checkpoints")[1][0][0] == len(names)


def test_bad_training_config_fails_with_the_fix(pipeline):
    defs, instance, _, _ = pipeline
    bad = run(defs, instance, T.full_ft_checkpoint, config={**QUICK, "overrides_json": json.dumps({"learning_rate": 1})})
    assert not bad.success
    assert "unknown recipe fields learning_rate" in str(bad.all_events)
    missing = run(defs, instance, T.full_ft_checkpoint, config={**QUICK, "base_checkpoint": "nope"})
    assert not missing.success and "materialize base_checkpoint first" in str(missing.all_events)
    name = run(defs, instance, T.full_ft_checkpoint, config={**QUICK, "checkpoint_name": "has space"})
    assert not name.success and "becomes a partition key" in str(name.all_events)


# --- training as an external `accelerate launch` job through Dagster Pipes --------------------------

PIPES_2 = {**QUICK, "launcher": "pipes", "processes": 2}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_two_process_training_through_pipes_matches_in_process_training(pipeline):
    """`launcher: pipes` runs `accelerate launch --num_processes 2 ... mimic train` as a subprocess: the run
    succeeds, logs and the materialization come back through Pipes, and the checkpoint is built like
    the in-process one (same files, same metadata fields, same vocabulary)."""
    defs, instance, data, in_process = pipeline
    result = run(defs, instance, T.base_checkpoint, config={**PIPES_2, "checkpoint_name": "base_pipes"})
    assert result.success
    ckpts = data / "checkpoints"
    meta = validate_checkpoint(ckpts / "base_pipes")
    reference = validate_checkpoint(ckpts / "base")
    assert meta["processes"] == 2 and reference["processes"] == 1 and meta["steps"] == reference["steps"] == 2
    assert _files(ckpts / "base_pipes") == _files(ckpts / "base") and sorted(meta) == sorted(reference)
    assert meta["dagster_run_id"] == result.run_id and meta["base_checkpoint"] is None
    assert (ckpts / "base_pipes" / "tokenizer.json").read_text() == (ckpts / "base" / "tokenizer.json").read_text()
    assert not staging_dir(ckpts / "base_pipes").exists()
    # the metadata came from the job (through Pipes) and has the in-process keys and values' kinds
    md, ref = materialization(result, T.base_checkpoint), materialization(in_process, T.base_checkpoint)
    assert sorted(md) == sorted(ref)
    assert {k: type(v).__name__ for k, v in md.items()} == {k: type(v).__name__ for k, v in ref.items()}
    assert md["processes"].value == 2 and md["steps"].value == 2 and md["checkpoint"].value == "base_pipes"
    assert md["loss_curve"].value.startswith("![training loss of base_pipes](data:image/png;base64,")
    assert 0 <= md["heldout_accuracy_after"].value <= 100
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any("[pipes] external process successfully opened dagster pipes" in m for m in logs)
    assert any("base_pipes training: step 2/2" in m for m in logs)  # progress streamed from the job
    assert "base_pipes" in instance.get_dynamic_partitions(checkpoint_partitions.name)


def test_a_failed_training_job_fails_the_asset_with_its_error_and_keeps_the_good_checkpoint(pipeline):
    defs, instance, data, _ = pipeline
    ckpts = data / "checkpoints"
    shutil.copytree(ckpts / "base", ckpts / "good")
    before = {name: (ckpts / "good" / name).read_bytes() for name in _files(ckpts / "good")}
    # a recipe field only the job can check: the tiny LM has 4 layers, so layers 7-9 do not exist
    bad = run(defs, instance, T.base_checkpoint,
              config={**PIPES_2, "checkpoint_name": "good", "overrides_json": json.dumps({"masked_layers": "7-9"})})  # fmt: skip
    assert not bad.success
    failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert "the training job failed: ValueError: recipe base: masked_layers='7-9'" in message, message
    validate_checkpoint(ckpts / "good")
    assert {name: (ckpts / "good" / name).read_bytes() for name in _files(ckpts / "good")} == before
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".good")]  # no half-swapped folder


def test_a_pipes_training_job_resumes_from_the_staging_state(pipeline):
    """A run stopped after step 1 (in process) is finished by a two-process job through Pipes, from step 1."""
    defs, instance, data, _ = pipeline
    ckpts = data / "checkpoints"
    overrides = json.dumps({"save_every": 1})
    recipe = configured_recipe("full_ft", QUICK["steps_scale"], json.loads(overrides))
    items = TrainingData(ItemPool.from_parquet(sorted((data / "datasets" / "train").glob("*.parquet"))),
                         ItemPool.from_parquet([data / "datasets" / "single_image" / "items.parquet"]))  # fmt: skip
    stopped = train_checkpoint(recipe, ckpts / "resumed", items, base=ckpts / "base", stop_after=1)
    assert stopped.steps == 1 and not (ckpts / "resumed").exists()
    result = run(defs, instance, T.full_ft_checkpoint,
                 config={**PIPES_2, "checkpoint_name": "resumed", "overrides_json": overrides})  # fmt: skip
    assert result.success
    meta = validate_checkpoint(ckpts / "resumed")
    assert meta["steps"] == 2 and meta["processes"] == 2 and meta["loss_curve"][0] == stopped.losses[0]
    assert not staging_dir(ckpts / "resumed").exists()


def test_launcher_settings_are_checked_before_anything_runs(pipeline):
    defs, instance, _, _ = pipeline
    many = run(defs, instance, T.full_ft_checkpoint, config={**QUICK, "processes": 2})
    assert not many.success and "more with launcher 'pipes'" in str(many.all_events)
    unknown = run(defs, instance, T.full_ft_checkpoint, config={**QUICK, "launcher": "slurm"})
    assert not unknown.success and "use in_process or pipes" in str(unknown.all_events)
