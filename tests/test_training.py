"""Training recipes on a hand-made item pool: checkpoints, what is trained, resuming, atomicity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mimic_pipeline.core.models.adapters import load_adapter
from mimic_pipeline.core.models.masking import layer_mask_of
from mimic_pipeline.core.models.tiny import TinyModelConfig, build_tiny_checkpoint
from mimic_pipeline.core.training.checkpoints import (
    CheckpointError, complete_checkpoints, read_metadata, validate_checkpoint,
)  # fmt: skip
from mimic_pipeline.core.training.data import ItemPool, split_holdout
from mimic_pipeline.core.training.recipes import Recipe, default_recipes
from mimic_pipeline.core.training.trainer import TrainingData, staging_dir, train_checkpoint
from mimic_pipeline.core.training.vision_pretraining import count_targets
from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY

LEAVES = [c for children in DEFAULT_TAXONOMY.values() for c in children]
SMALL = TinyModelConfig(vision_hidden=32, text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1)


def _pool(folder, n: int, n_images: int, seed: int) -> ItemPool:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n * n_images):
        path = folder / f"{seed}-{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    kinds = ["counting", "presence", "listing"]
    rows = {"item_ids": [], "questions": [], "answers": [], "image_paths": [], "tasks": [], "queries": [], "answer_structs": []}
    for i in range(n):
        task = kinds[i % 3] if n_images == 1 else "counting"
        name = LEAVES[i % len(LEAVES)]
        answer = {"counting": str(i % 4), "presence": "yes" if i % 2 else "no", "listing": "square, triangle"}[task]
        struct = {"categories": ["square", "triangle"]} if task == "listing" else {"total": i % 4}
        rows["item_ids"].append(f"{seed}.{i}")
        rows["questions"].append({"counting": f"How many {name}s are there?", "presence": f"Is there a {name}?",
                                  "listing": "Which kinds of polygon appear?"}[task])  # fmt: skip
        rows["answers"].append(answer)
        rows["image_paths"].append(paths[i * n_images : (i + 1) * n_images])
        rows["tasks"].append(task)
        rows["queries"].append(["polygon"] if task == "listing" else [name])
        rows["answer_structs"].append(json.dumps(struct))
    return ItemPool(**rows)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    return _pool(root / "single", 24, 1, seed=1), _pool(root / "multi", 24, 3, seed=2)


def _builder(folder):
    return build_tiny_checkpoint(folder, LEAVES, list(DEFAULT_TAXONOMY), SMALL)


@pytest.fixture(scope="module")
def base(tmp_path_factory, pools):
    single, _ = pools
    recipe = Recipe("base", steps=3, batch_size=4, trainable="all", single_image_share=1.0,
                    vision_pretrain_steps=2, align_steps=2)  # fmt: skip
    out = tmp_path_factory.mktemp("ckpt") / "base"
    result = train_checkpoint(recipe, out, TrainingData(None, single, "v1"), build_base=_builder)
    return out, result


def test_base_is_a_complete_checkpoint_with_its_lineage(base):
    out, result = base
    meta = validate_checkpoint(out)
    assert meta["recipe"] == "base" and meta["base_checkpoint"] is None
    assert meta["steps"] == 3 == len(meta["loss_curve"]) == result.steps
    assert meta["training_set_version"] == "v1"
    assert meta["config_hash"] == replace(Recipe("base", steps=3, batch_size=4, trainable="all",
                                                 single_image_share=1.0, vision_pretrain_steps=2, align_steps=2)).hash()  # fmt: skip
    assert (out / "DONE").exists() and (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not staging_dir(out).exists()  # the staging folder is gone once the checkpoint is in place
    assert complete_checkpoints(out.parent) == [out]
    assert load_adapter(out).architecture == "llava_onevision"


def test_full_ft_trains_lm_and_projector_and_leaves_the_vision_tower(base, pools, tmp_path):
    single, multi = pools
    recipe = Recipe("full_ft", steps=2, batch_size=4, lr=1e-2)
    out = tmp_path / "full_ft"
    train_checkpoint(recipe, out, TrainingData(multi, single, "v2"), base=base[0])
    before, after = load_file(base[0] / "model.safetensors"), load_file(out / "model.safetensors")
    tower = [k for k in before if "vision_tower" in k]
    lm = [k for k in before if "language_model" in k and k.endswith("q_proj.weight")]
    projector = [k for k in before if "multi_modal_projector" in k]
    assert tower and lm and projector
    assert all(torch.equal(before[k], after[k]) for k in tower)
    assert all(not torch.equal(before[k], after[k]) for k in lm + projector)
    assert read_metadata(out)["base_checkpoint"] == "base"


def test_lora_trains_adapters_on_the_language_model_only(base, pools, tmp_path):
    single, multi = pools
    recipe = replace(default_recipes()["lora"], steps=2, batch_size=4, lora_r=4, lora_alpha=8)
    out = tmp_path / "lora"
    result = train_checkpoint(recipe, out, TrainingData(multi, single), base=base[0])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base[0].resolve())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.05)
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("language_model" in k or "multi_modal_projector" in k for k in saved)
    assert any("lora_A" in k for k in saved) and any("multi_modal_projector" in k for k in saved)
    assert not any("vision_tower" in k for k in saved)
    assert 0 < result.trainable_parameters < result.total_parameters
    adapter = load_adapter(out)  # base + adapter, through the adapter's config
    assert hasattr(adapter.model, "peft_config") and layer_mask_of(adapter.model) is None


def test_lora_masked_records_and_reinstalls_the_mask(base, pools, tmp_path):
    single, multi = pools
    recipe = replace(default_recipes()["lora_masked"], steps=2, batch_size=4, lora_r=4)
    out = tmp_path / "lora_masked"
    train_checkpoint(recipe, out, TrainingData(multi, single), base=base[0])
    meta = read_metadata(out)
    assert meta["masked_layers"] == [1]  # second half of a 2-layer LM
    mask = layer_mask_of(load_adapter(out).model)
    assert mask is not None and list(mask.layers) == [1] and mask.mode == "block"


def test_a_stopped_run_resumes_and_matches_an_uninterrupted_one(base, pools, tmp_path):
    single, multi = pools
    recipe = Recipe("full_ft", steps=4, batch_size=4, save_every=100)
    data = TrainingData(multi, single)
    whole = train_checkpoint(recipe, tmp_path / "whole", data, base=base[0])
    partial = train_checkpoint(recipe, tmp_path / "resumed", data, base=base[0], stop_after=2)
    assert partial.steps == 2 and not (tmp_path / "resumed").exists()  # no checkpoint before the end
    assert (staging_dir(tmp_path / "resumed") / "training_state" / "state.pt").exists()
    resumed = train_checkpoint(recipe, tmp_path / "resumed", data, base=base[0])
    assert resumed.steps == 4 and len(resumed.losses) == 4
    assert np.allclose(resumed.losses, whole.losses, atol=1e-5)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_failed_retrain_keeps_the_previous_checkpoint(base, pools, tmp_path):
    single, multi = pools
    out = tmp_path / "full_ft"
    train_checkpoint(Recipe("full_ft", steps=2, batch_size=4), out, TrainingData(multi, single), base=base[0])
    good = (out / "model.safetensors").read_bytes()
    broken = replace(multi, image_paths=[[str(tmp_path / "missing.png")]] * len(multi))
    with pytest.raises(Exception, match="missing.png"):
        train_checkpoint(Recipe("full_ft", steps=2, batch_size=4, single_image_share=0.0), out,
                         TrainingData(broken, single), base=base[0])  # fmt: skip
    assert (out / "model.safetensors").read_bytes() == good and validate_checkpoint(out)


def test_half_written_checkpoints_are_refused_with_the_fix(base, tmp_path):
    import shutil

    copy = tmp_path / "copied"
    shutil.copytree(base[0], copy)
    (copy / "DONE").unlink()
    with pytest.raises(CheckpointError, match="no DONE marker"):
        validate_checkpoint(copy)
    (copy / "DONE").write_text("now\n")
    with open(copy / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="half-written copy"):
        validate_checkpoint(copy)
    assert complete_checkpoints(tmp_path) == [copy]  # DONE decides completeness; validation finds the damage
    with pytest.raises(CheckpointError, match="letters, digits"):
        validate_checkpoint(tmp_path / "bad name")


def test_vision_pretraining_targets_come_from_counting_and_no_answers(pools):
    single, _ = pools
    names, rows = count_targets(single)
    for i, cls, count in rows:
        assert single.queries[i] == [names[cls]]
        assert count == (int(single.answers[i]) if single.tasks[i] == "counting" else 0)
    assert {single.tasks[i] for i, _, _ in rows} == {"counting", "presence"}
    assert all(single.answers[i] == "no" for i, _, _ in rows if single.tasks[i] == "presence")


def test_batches_are_a_pure_function_of_seed_and_step(pools):
    single, multi = pools
    data = TrainingData(multi, single)
    recipe = Recipe("full_ft", steps=10, single_image_share=0.25)
    a, b = data.draw(recipe, 3, 8), data.draw(recipe, 3, 8)
    assert [(id(p), i) for p, i in a] == [(id(p), i) for p, i in b]
    assert sum(p is single for p, _ in a) == 2 and sum(p is multi for p, _ in a) == 6
    assert data.draw(recipe, 4, 8) != a


def test_holdout_is_disjoint_and_fixed(pools):
    single, _ = pools
    train, held = split_holdout(single, 5, seed=0)
    assert len(held) == 5 and len(train) == len(single) - 5
    assert not set(train.item_ids) & set(held.item_ids)
    assert split_holdout(single, 5, seed=0)[1].item_ids == held.item_ids


def test_recipe_validation_names_the_field():
    with pytest.raises(ValueError, match="trainable='vision'"):
        Recipe("x", steps=1, trainable="vision")
    with pytest.raises(ValueError, match="masked_layers='5-9'"):
        Recipe("x", steps=1, masked_layers="5-9").masked_layer_range(4)
    assert Recipe("x", steps=1, masked_layers="second_half").masked_layer_range(24) == range(12, 24)
    assert Recipe("x", steps=1, masked_layers="1-3").masked_layer_range(4) == range(1, 3)


def _write_items(pool: ItemPool, path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": pool.item_ids, "question": pool.questions, "answer": pool.answers,
                             "image_paths": pool.image_paths, "task": pool.tasks, "query": pool.queries,
                             "answer_struct": pool.answer_structs}), path)  # fmt: skip
    return str(path)


@pytest.mark.slow
def test_two_process_cpu_training_through_accelerate_launch(base, pools, tmp_path):
    """`accelerate launch` runs `mimic train` unchanged: two CPU processes, gradients averaged, one checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    single, multi = pools
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "mimic_pipeline.cli", "train", "--recipe", "full_ft", "--base", str(base[0]),
           "--out", str(out), "--single-image", _write_items(single, tmp_path / "single.parquet"),
           "--train", _write_items(multi, tmp_path / "multi.parquet"), "--heldout", "4",
           "--overrides", json.dumps({"steps": 3, "batch_size": 2})]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    meta = validate_checkpoint(out)
    assert meta["steps"] == 3 and len(meta["loss_curve"]) == 3 and meta["processes"] == 2
    assert run.stdout.count(f"checkpoint {out}") == 1  # the main process writes and reports
    assert not staging_dir(out).exists()
